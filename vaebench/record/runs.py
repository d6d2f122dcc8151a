"""The record's runs as typed values: what the writer (vaebench.record.writer) hands to the
driver, ``status`` and the readers instead of MLflow's raw ``Run`` rows, so that only the writer
knows MLflow's entity layout."""

from __future__ import annotations

from dataclasses import dataclass, field

from vaebench.record.vocab import HASH, POINT_KEY, STATE


@dataclass
class StudyRun:
    """A study record's parent run."""

    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return self.tags.get("mlflow.note.content", "")


@dataclass
class TrialRun:
    """One trial run as read from the store (strings as MLflow keeps them)."""

    run_id: str
    run_name: str
    start_time: int | None
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each key (at the highest step)
    last_step: int = 0  # the highest step (epoch) logged, 0 when none (filled by readers that ask)
    status: str = "FINISHED"  # MLflow's

    @property
    def state(self) -> str | None:
        """vaebench's trial state (completed, diverged, pruned, failed, killed, running)."""
        return self.tags.get(STATE)

    @property
    def config_hash(self) -> str | None:
        return self.tags.get(HASH)

    @property
    def point_key(self) -> str:
        """The key its point's seeds share (the config hash for runs older than point keys)."""
        return self.tags.get(POINT_KEY, self.tags.get(HASH, self.run_id))
