"""Use a calib epsilon table from other attack libraries.

Each adapter imports its library lazily (a clear ImportError names the package), runs it with
each sample's class budget, and checks every returned example against the box [0,1] and its own
class's ball before returning it. Every adapter takes images as a tensor or a numpy array and
returns a float32 tensor (N, C, H, W).
"""
from calib.interop.art_adapter import art_attack, art_classifier
from calib.interop.autoattack_adapter import autoattack_attack
from calib.interop.foolbox_adapter import foolbox_attack
from calib.interop.torchattacks_adapter import torchattacks_attack

__all__ = ["torchattacks_attack", "art_attack", "art_classifier", "foolbox_attack", "autoattack_attack"]
