"""Clips: the frames of a robot track the selector keeps after a frame its policy kept (``clip`` in selection.yaml).

Per stream, a kept frame with a robot track id opens a clip; the next frames of that stream with
the same track id are counted, and every ``spacing``-th is offered to the budget and the
deduplication as a clip frame until ``frames`` were kept or the track ends (another id, or none).
Pure bookkeeping; the :class:`fleetloop_core.selection.Selector` spends the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetloop_core.selection_config import ClipConfig


@dataclass
class _Open:
    track: str
    anchor_ns: int  # the stamp of the frame the policy kept
    seen: int = 0  # track frames since the anchor
    kept: int = 0  # clip frames kept


class Clips:
    """The open clip of each stream."""

    def __init__(self, config: ClipConfig):
        self.config = config
        self._open: dict[str, _Open] = {}

    def open(self, stream: str, track: str | None, anchor_ns: int) -> None:
        """Start a clip after a frame the policy kept (a frame without a track id opens none)."""
        if self.config.frames and track is not None:
            self._open[stream] = _Open(track, anchor_ns)
        else:
            self._open.pop(stream, None)

    def due(self, stream: str, track: str | None) -> _Open | None:
        """Return the stream's open clip when this frame (of ``track``) should be offered as a clip frame."""
        clip = self._open.get(stream)
        if clip is None:
            return None
        if track is None or track != clip.track or clip.kept >= self.config.frames:
            del self._open[stream]  # the track ended, or the clip is full
            return None
        clip.seen += 1
        return clip if clip.seen % self.config.spacing == 0 else None

    def kept(self, clip: _Open) -> None:
        """Count a kept clip frame."""
        clip.kept += 1
