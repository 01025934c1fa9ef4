"""PGD whose projection step happens in embedding space (docs/design.md, "Attacks").

Threat model: x' in [0,1], optionally ``||x' - x||_p <= cap``, and ``||g(x') - g(x)||_2 <= eps_emb(y)``
for the embedding g. The classifier loss is ascended in input space; after every step the
candidate x~ is projected back onto the embedding ball by one of two methods:

* ``bisection``: search a segment ``s + t (x~ - s)``, t in [0, 1], from a feasible start s: the
  previous iterate (``segment="previous"``, default) or the clean x (``segment="clean"``, the
  segment [x, x~] of docs/design.md). t = 0 is feasible, so the result always is. The first probe is
  the secant guess ``t = (eps - d(s)) / (d(x~) - d(s))`` (exact if the distance is linear along
  the segment), then ``iters - 1`` halvings of the bracket; the feasible end is returned. From the
  previous iterate the segment is one step long, so the secant guess is accurate and a miss costs
  one step of progress; from x a miss pulls the iterate back toward the clean image (measured on
  MNIST: success 0.017 vs 0.088 for newton, at 3.7 forward passes of g per sample-step).
* ``newton``: Newton steps on ``h(x') = ||g(x') - g(x)|| - eps`` along its gradient, as perceptual
  PGD (Laidlaw et al. 2021) projects onto LPIPS balls, each followed by the box/cap projection;
  samples still outside after ``newton_iters`` fall back to bisection towards the Newton point, so
  the result is feasible.
  Each Newton step aims at ``(1 - newton_margin) * eps`` and ignores gradient components the box
  would clip (a projected Newton step).
* ``tangent`` (default of ``calib run``): the same projected Newton step, but its first one is taken
  on the linearisation of h at the previous iterate, whose value and gradient (the ball's normal)
  are already known; one forward+backward pass of g at the result then both checks it and gives the
  normal for the next step. Only a point that is still outside gets a Newton step with its fresh
  gradient (``newton_iters`` of them) and then the bisection fallback towards the previous iterate,
  so the result is always feasible. It needs one pass of g per step where ``newton`` with 2
  iterations needs about four (measured in ``bench/pgd_throughput.py``).

:class:`EmbeddingBall` counts how often the projection was active and the extra forward/backward
passes of g it cost (in samples), reported in ``AttackResult.info["projection"]``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from calib.perturb.invariants import ConstraintViolation, check_ball
from calib.perturb.norms import get_norm
from calib.perturb.objectives import ClassifierLoss
from calib.perturb.pgd import AttackResult, eval_mode, pgd, resolve_eps
from calib.errors import ConfigError

METHODS = ("bisection", "newton", "tangent")


class EmbeddingBall:
    """The set ``{x' : ||g(x') - g(x)||_2 <= eps_emb}`` with its projection; a PGD projector."""

    def __init__(self, embedding: nn.Module, x: torch.Tensor, eps_emb: torch.Tensor, *, method: str = "bisection",
                 iters: int = 1, newton_iters: int = 1, newton_margin: float = 0.1, segment: str = "previous",
                 cap: torch.Tensor | None = None, cap_norm: str = "linf") -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown projection {method!r}; choose {', '.join(METHODS)}")
        if segment not in ("previous", "clean"):
            raise ConfigError(f"unknown segment {segment!r}; choose previous or clean")
        self.segment = segment
        if iters < 1 or newton_iters < 1:
            raise ConfigError("projection iterations must be >= 1")
        self.g, self.method, self.iters, self.newton_iters = embedding, method, iters, newton_iters
        self.newton_margin = newton_margin
        self.eps = eps_emb.reshape(-1).to(x.device, torch.float32)
        self.cap, self.cap_norm = cap, get_norm(cap_norm)
        with torch.no_grad():
            self.anchor = embedding(x).detach()
        self.d_prev = torch.zeros(x.shape[0], device=x.device)  # distance of the last accepted iterate
        self.normal: torch.Tensor | None = None  # tangent: gradient of h at the last accepted iterate
        self.stats = {"calls": 0, "candidates": 0, "active": 0, "g_forward": 0, "g_backward": 0,
                      "newton_fallback": 0}

    def distance(self, x_adv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.stats["g_forward"] += int(idx.numel())
            return torch.linalg.vector_norm(self.g(x_adv) - self.anchor[idx], dim=1)

    def __call__(self, x: torch.Tensor, x_prev: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        if self.method == "tangent":
            return self._tangent(x, x_prev, cand)
        n = x.shape[0]
        all_idx = torch.arange(n, device=x.device)
        d = self.distance(cand, all_idx)
        active = (d > self.eps) | ~torch.isfinite(d)
        self.stats["calls"] += 1
        self.stats["candidates"] += n
        self.stats["active"] += int(active.sum())
        self.d_prev = torch.where(active, self.d_prev, d)
        if not active.any():
            return cand
        idx = active.nonzero().flatten()
        out = cand.clone()
        start = x_prev if self.segment == "previous" else x
        d_start = self.d_prev if self.segment == "previous" else torch.zeros_like(self.d_prev)
        target, d_target = cand, d
        if self.method == "newton":
            xn, ok, dn = self._newton(x[idx], cand[idx], idx)
            out[idx[ok]] = xn[ok]
            self.d_prev[idx[ok]] = dn[ok]
            # a miss is bisected towards the Newton point, which keeps its move along the boundary
            target, d_target = out.clone(), d.clone()
            target[idx[~ok]], d_target[idx[~ok]] = xn[~ok], dn[~ok]
            idx = idx[~ok]
            self.stats["newton_fallback"] += int(idx.numel())
            if idx.numel() == 0:
                return out
        out[idx], self.d_prev[idx] = self._bisect(start[idx], target[idx], idx, d_start[idx], d_target[idx])
        return out

    def _bisect(self, start: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor, d_lo: torch.Tensor,
                d_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.eps[idx]
        shape = (-1,) + (1,) * (start.dim() - 1)
        lo = torch.zeros(len(idx), device=start.device)
        hi = torch.ones(len(idx), device=start.device)
        d_at_lo = d_lo.clone()
        gap = d_hi - d_lo
        ok_gap = torch.isfinite(gap) & (gap > 0)
        t = torch.where(ok_gap, (eps - d_lo) / torch.where(ok_gap, gap, torch.ones_like(gap)),
                        torch.zeros_like(gap)).clamp(0, 1)
        for it in range(self.iters):
            if it > 0:
                t = (lo + hi) / 2
            dt = self.distance(start + t.view(shape) * (cand - start), idx)
            ok = dt <= eps
            lo = torch.where(ok, t, lo)
            d_at_lo = torch.where(ok, dt, d_at_lo)
            hi = torch.where(ok, hi, t)
        return start + lo.view(shape) * (cand - start), d_at_lo

    def _newton(self, x: torch.Tensor, cand: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cur = cand.clone()
        for _ in range(self.newton_iters):
            h, grad = self._value_and_normal(cur, idx)
            with torch.no_grad():
                cur = self._newton_step(x, cur, h, grad, idx)  # aims a little inside, box and cap after
        d = self.distance(cur, idx)
        return cur, d <= self.eps[idx], d

    def _value_and_normal(self, z: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h = ||g(z) - g(x)|| and its gradient (one forward and one backward pass of g)."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            h = torch.linalg.vector_norm(self.g(z) - self.anchor[idx], dim=1)
            (grad,) = torch.autograd.grad(h.sum(), z)
        self.stats["g_forward"] += int(idx.numel())
        self.stats["g_backward"] += int(idx.numel())
        return h.detach(), torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def _newton_step(self, x: torch.Tensor, z: torch.Tensor, value: torch.Tensor, normal: torch.Tensor,
                     idx: torch.Tensor, margin: torch.Tensor | float | None = None) -> torch.Tensor:
        """One projected Newton step on (the linearisation) ``value + normal . (z' - z) = (1 - margin) eps``
        from z, followed by the box and the cap."""
        shape = (-1,) + (1,) * (z.dim() - 1)
        normal = torch.where(((z <= 0) & (normal > 0)) | ((z >= 1) & (normal < 0)), 0.0, normal)
        gn2 = normal.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        margin = self.newton_margin if margin is None else margin
        excess = (value - self.eps[idx] * (1 - margin)).clamp_min(0)
        return self._box_and_cap(x, z - (excess / gn2).view(shape) * normal, idx)

    def _tangent(self, x: torch.Tensor, x_prev: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        idx = torch.arange(n, device=x.device)
        eps = self.eps
        self.stats["calls"] += 1
        self.stats["candidates"] += n
        if self.normal is None or x_prev is x:  # a (re)start: value and normal at the starting point
            h, normal = self._value_and_normal(cand, idx)
            out = cand.clone()
            bad = (h > eps) | ~torch.isfinite(h)
            if bad.any():
                b = bad.nonzero().flatten()
                out[b], h[b] = self._bisect(x[b], cand[b], b, torch.zeros_like(h[b]), h[b])
            self.normal, self.d_prev = normal, h
            self.margin = torch.full_like(h, self.newton_margin)
            self.stats["active"] += int(bad.sum())
            return out
        # the first Newton step on the linearisation at the previous iterate: no pass of g
        d_before = self.d_prev
        lin = d_before + (self.normal * (cand - x_prev)).flatten(1).sum(1)
        target = eps * (1 - self.margin)
        z = self._newton_step(x, cand, lin, self.normal, idx, self.margin)
        h, normal = self._value_and_normal(z, idx)  # the check, and the next step's normal
        miss = (h > eps) | ~torch.isfinite(h)
        stepped = lin > target
        self.stats["active"] += int((stepped | miss).sum())
        # aim each sample's next linear step lower by the curvature error it just made (or higher)
        err = torch.nan_to_num((h - target) / eps.clamp_min(1e-12), nan=0.5, posinf=0.5, neginf=0.0)
        self.margin = torch.where(stepped, (self.margin + err).clamp(0.05, 0.5), self.margin)
        out, self.normal = z, normal
        m = miss.nonzero().flatten()
        for it in range(self.newton_iters):
            if m.numel() == 0:
                break
            zm = self._newton_step(x[m], out[m], h[m], normal[m], m)
            if it < self.newton_iters - 1:
                hm, nm = self._value_and_normal(zm, m)
                normal[m] = nm
            else:
                hm = self.distance(zm, m)
            out[m], h[m] = zm, hm
            m = m[(hm > eps[m]) | ~torch.isfinite(hm)]
        self.stats["newton_fallback"] += int(m.numel())
        if m.numel():  # the previous iterate is feasible: bisect towards the last Newton point
            out[m], h[m] = self._bisect(x_prev[m], out[m], m, d_before[m], h[m])
        self.d_prev = h
        return out

    def _box_and_cap(self, x: torch.Tensor, x_adv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if self.cap is not None:
            delta = self.cap_norm.project(delta, self.cap[idx])
        return torch.clamp(x + delta, 0.0, 1.0)

    def report(self) -> dict[str, Any]:
        s = dict(self.stats)
        s["active_rate"] = s["active"] / max(s["candidates"], 1)
        s["g_forward_per_candidate"] = s["g_forward"] / max(s["candidates"], 1)
        s["method"], s["segment"] = self.method, self.segment
        s["iters"] = self.iters if self.method == "bisection" else self.newton_iters
        return s


def embedding_pgd(model: nn.Module, embedding: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_emb: Any, *,
                  cap: Any = None, cap_norm: str = "linf", method: str = "bisection", iters: int = 1,
                  newton_iters: int = 1, segment: str = "previous", steps: int = 10, step_size: float = 0.02,
                  loss: str = "ce",
                  random_start: bool = False, restarts: int = 1, seed: int = 0,
                  on_step: Callable[[], None] | None = None) -> AttackResult:
    """PGD on the classifier loss, projected onto the embedding ball ``||g(x') - g(x)|| <= eps_emb``.

    Args:
        model: classifier f; embedding: g (unit-norm outputs).
        x, y: clean images (N, C, H, W) in [0,1] and labels (N,).
        eps_emb: embedding budgets: scalar, (N,), or an eps table (its ``embedding/l2`` column).
        cap: optional input-norm cap (scalar or (N,)) in ``cap_norm``; without it, the input ball
            is the whole box (radius 1 in L-inf).
        step_size: absolute input step (L-inf sign steps of this size, or L2 steps).
        method / iters / newton_iters / segment: projection (see the module docstring).
        on_step: called after every PGD step (progress).

    Returns an :class:`AttackResult` whose ``info["projection"]`` reports the projection's
    activity and cost, and whose every example is checked: box, cap, and embedding distance
    ``<= eps_emb + 1e-6`` (recomputed with a fresh forward pass).
    """
    x = x.detach()
    n = x.shape[0]
    e_emb = resolve_eps(eps_emb, n, x.device, y, "embedding", "l2").view(-1)
    cap_t = resolve_eps(cap if cap is not None else 1.0, n, x.device, y, "input", cap_norm)
    with eval_mode(model, embedding):
        ball = EmbeddingBall(embedding, x, e_emb, method=method, iters=iters, newton_iters=newton_iters,
                             segment=segment, cap=cap_t, cap_norm=cap_norm)
        res = pgd(ClassifierLoss(model, y, loss), x, cap_t, cap_norm, steps=steps, step_size=step_size,
                  random_start=random_start, restarts=restarts, seed=seed, projector=ball, check=False,
                  on_step=on_step)
        with torch.no_grad():
            d = torch.linalg.vector_norm(embedding(res.x_adv) - ball.anchor, dim=1)
        bad = d > e_emb + 1e-6
        if bad.any():  # numerical edge: never return an infeasible example
            res.x_adv[bad] = x[bad]
            with torch.no_grad():
                res.success[bad] = model(x[bad]).argmax(1) != y[bad]
        ball.stats["final_fallback_to_x"] = int(bad.sum())
        check_ball(x, res.x_adv, cap_t, cap_norm, who="embedding_pgd")
        with torch.no_grad():
            d = torch.linalg.vector_norm(embedding(res.x_adv) - ball.anchor, dim=1)
        if (d > e_emb + 1e-6).any():
            raise ConstraintViolation("embedding_pgd: an example left its embedding ball")
    res.info.update(projection=ball.report(), eps_emb=e_emb, embedding_shift=d)
    return res
