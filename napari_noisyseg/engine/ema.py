"""Exponential moving average of a network: the mean-teacher building block.

Used by the methods that need a slowly moving, smoother copy of the network they
train (Distilling effective supervision, Deep Self-Cleansing).
"""

from __future__ import annotations

import copy

import torch


class EMATeacher:
    """A teacher network whose weights follow the student's by EMA.

    ``teacher = d · teacher + (1 − d) · student`` after every optimiser step, with
    ``d = min(decay, 1 − 1 / (updates + 1))`` when ``ramp`` is on (the mean-teacher
    warm-up of Tarvainen & Valpola, 2017: early on the teacher is a plain running
    average instead of lagging far behind a student that still changes fast).
    Floating-point buffers (batch-norm running statistics) are averaged the same
    way, integer buffers copied, so the teacher can run in eval mode.

    Parameters
    ----------
    student : torch.nn.Module
        The network being trained; copied once at construction.
    decay : float
        EMA decay in [0, 1).
    ramp : bool
        Use the warm-up decay above.

    Attributes
    ----------
    model : torch.nn.Module
        The teacher, in eval mode, with gradients disabled.
    updates : int
        Number of :meth:`update` calls so far.
    """

    def __init__(self, student: torch.nn.Module, decay: float = 0.99, ramp: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.ramp = ramp
        self.updates = 0
        self.model = copy.deepcopy(student).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.ramp:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.updates + 2))

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """Move the teacher towards ``student`` (call after each optimiser step)."""
        decay = self.current_decay()
        for teacher_p, student_p in zip(self.model.parameters(), student.parameters()):
            teacher_p.lerp_(student_p.detach(), 1.0 - decay)
        for teacher_b, student_b in zip(self.model.buffers(), student.buffers()):
            if teacher_b.is_floating_point():
                teacher_b.lerp_(student_b.detach(), 1.0 - decay)
            else:
                teacher_b.copy_(student_b)
        self.updates += 1
