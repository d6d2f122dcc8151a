"""What runs next (docs/design.md, sweep: Search), in the shape of Ray Tune's Searcher:
``suggest(n)`` gives up to n trials to start, ``on_trial_result`` takes each epoch and
returns a Decision (which trials to prune), ``on_trial_complete`` takes each final state.
A search never writes MLflow; OptunaSearch is the only code that writes the Optuna storage.

A trial is one (point, seed); its key is its config hash (its identity in the record).
A point's identity is explicit: its grid index, or its Optuna trial number.

- GridSearch: the full factorial in file order, every seed of a point in turn; trials
  already final in the record (``finals``) are skipped.
- OptunaSearch: asks Optuna for points (random|tpe|nsga2); every point runs once per seed,
  Optuna is told the mean over seeds of the final objective(s) and, with a pruner, the
  mean over seeds at each epoch every live seed has reached.

Resume (OptunaSearch): the budget counts points. A point cut off by an interrupt (or left
RUNNING by a killed driver) is told FAIL, its number is kept in the Optuna study's user
attribute ``vaebench.interrupted`` (so it does not count), and it is asked again once as an
enqueued trial (user attribute ``vaebench.resumes`` = the old number) whose seeds already
final in the record are not rerun. The sampler is seeded with seeds[0] + the number of
trials already in the study, so a resumed study does not replay its opening points.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from vaebench.record.vocab import INTERRUPTED, OPTUNA_TRIAL, RESUMES
from vaebench.study.spec import Range, Study, TrialSpec, point_key

FINAL_STATES = ("completed", "diverged", "pruned")


@dataclass(frozen=True)
class Planned:
    """One trial to start."""

    key: str  # config hash
    spec: TrialSpec
    point: int  # grid index, or Optuna trial number
    tags: dict[str, str] = field(default_factory=dict)  # for the trial's run (e.g. its Optuna trial)


@dataclass(frozen=True)
class Decision:
    """What a search wants after an epoch: the keys of the trials to stop now (pruned)."""

    prune: tuple[str, ...] = ()


CONTINUE = Decision()


class SearchStoreError(RuntimeError):
    """The search's own storage (Optuna) failed; the message names it and the cause."""


class Search(Protocol):
    total: int  # trials of the whole study (for progress)
    refused: list[tuple[str, str]]  # (point, reason): points the config refused, never run
    adopted: dict[str, dict[str, str]]  # key -> tags for its final run (taken over by a point asked again)

    def suggest(self, n: int) -> list[Planned]: ...

    def on_trial_result(self, key: str, epoch: int, metrics: dict[str, float]) -> Decision: ...

    def on_trial_complete(self, key: str, state: str, metrics: dict[str, float]) -> None: ...

    def interrupt(self) -> None: ...  # the sweep stops: settle every point still open


# --------------------------------------------------------------------------- grid


class GridSearch:
    """The full factorial, lazily, skipping trials already final (or already planned)."""

    def __init__(
        self,
        study: Study,
        finals: dict[str, tuple[str, dict[str, float]]],
        done: set[tuple[str, int]] | None = None,
    ):
        """``done``: (point key, seed) of the trials in ``finals``, where the record knows them: a
        resumed grid passes over them without building their configs (~1 ms each), so that the
        first new trial of a grid of 90,000, 80,000 of them done, starts in seconds."""
        self.study, self.finals = study, finals
        self.total = study.n_trials()  # counted by arithmetic
        self.refused: list[tuple[str, str]] = []
        self.adopted: dict[str, dict[str, str]] = {}
        self._seen = set(finals)
        self._done = done or set()
        self._trials = self._iterate()

    def _iterate(self) -> Iterator[Planned]:
        for index, point in enumerate(self.study.iter_grid()):  # lazily: a grid is never held in memory
            key = point_key(point) if self._done else ""
            for seed in self.study.seeds:
                if (
                    key,
                    seed,
                ) in self._done:  # one record keeps one definition: the same point and seed, the same trial
                    continue
                spec = TrialSpec(point, seed, self.study.trial_config(point, seed))
                if spec.config_hash not in self._seen:
                    self._seen.add(spec.config_hash)
                    yield Planned(spec.config_hash, spec, index)

    def suggest(self, n: int) -> list[Planned]:
        out: list[Planned] = []
        for planned in self._trials:
            out.append(planned)
            if len(out) >= n:
                break
        return out

    def on_trial_result(self, key: str, epoch: int, metrics: dict[str, float]) -> Decision:
        return CONTINUE

    def on_trial_complete(self, key: str, state: str, metrics: dict[str, float]) -> None:
        self.finals[key] = (state, metrics)

    def interrupt(self) -> None:
        pass


# --------------------------------------------------------------------------- Optuna


@dataclass
class Point:
    number: int  # Optuna trial number
    trial: Any  # optuna.Trial
    keys: list[str]  # one per seed, in seed order
    reported: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> key -> first objective
    told: bool = False


class OptunaSearch:
    """Ask/tell over one Optuna study (``name`` in ``storage``)."""

    def __init__(self, study: Study, storage: str, name: str, finals: dict[str, tuple[str, dict[str, float]]]):
        import optuna

        self.study, self.storage, self.finals = study, storage, finals
        s = study.search
        self.objectives = list(s.objectives)
        self.total = study.n_trials()
        self.refused: list[tuple[str, str]] = []
        self.adopted: dict[str, dict[str, str]] = {}
        self.points: dict[int, Point] = {}
        self.by_key: dict[str, set[int]] = {}  # key -> open points that need it
        self.live: set[str] = set()  # keys planned and not final
        self.queue: deque[Planned] = deque()
        epochs = study.train.epochs
        # median: no pruning before 3 points have finished, nor in the first quarter of the epochs
        # (early ELBOs rank learning rates by speed, not by where they end)
        self.pruner_kind = s.pruner
        pruner = {
            "none": optuna.pruners.NopPruner(),
            "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4)),
            "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
        }[s.pruner]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with self._storage():
            if not storage.startswith("sqlite"):  # a database server: connections a restart dropped are remade
                storage = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
            existing = 0
            try:
                existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
            except KeyError:  # a new study
                pass
            sampler = {
                "random": optuna.samplers.RandomSampler,
                "tpe": optuna.samplers.TPESampler,
                "nsga2": optuna.samplers.NSGAIISampler,
            }[s.kind](seed=(study.seeds[0] + existing) % 2**32)  # numpy's RandomState takes 32 bits
            self.optuna = optuna.create_study(
                storage=storage,
                study_name=name,
                sampler=sampler,
                pruner=pruner,
                directions=s.directions,
                load_if_exists=True,
            )
            self._settle_orphans()

    @contextmanager
    def _storage(self) -> Iterator[None]:
        try:
            yield
        except SearchStoreError:
            raise
        except Exception as e:
            raise SearchStoreError(f"the Optuna storage {self.storage} failed: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ resume

    def _interrupted(self) -> set[int]:
        return set(self.optuna.user_attrs.get(INTERRUPTED, []))

    def _mark_interrupted(self, numbers: set[int]) -> None:
        # the mark first, then the tell: a driver killed between them leaves a RUNNING trial
        # that the next start settles the same way
        done = self._interrupted()
        if not numbers <= done:
            self.optuna.set_user_attr(INTERRUPTED, sorted(done | numbers))

    def _settle_orphans(self) -> None:
        """Trials left RUNNING by a killed driver are interrupted points; every interrupted point
        not yet asked again is enqueued once more with its own values."""
        import optuna

        running = {t.number for t in self.optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        if running:
            self._mark_interrupted(running)
            for n in sorted(running):
                self.optuna.tell(n, state=optuna.trial.TrialState.FAIL)
        trials = {t.number: t for t in self.optuna.get_trials(deepcopy=False)}
        resumed = {t.user_attrs.get(RESUMES) for t in trials.values()}
        for n in sorted(self._interrupted() - resumed):
            params = trials[n].params
            if set(params) == set(self.study.space):  # a trial killed before all its values were drawn is dropped
                self.optuna.enqueue_trial(params, user_attrs={RESUMES: n})

    def _used(self) -> tuple[int, int]:
        """(points counted against the budget, points enqueued and not yet asked)."""
        import optuna

        trials = self.optuna.get_trials(deepcopy=False)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        return len(trials) - len(self._interrupted()), waiting

    # ------------------------------------------------------------------ ask

    def suggest(self, n: int) -> list[Planned]:
        with self._storage():
            while len(self.queue) < n:
                used, waiting = self._used()
                if not waiting and used >= self.study.search.budget:
                    break
                self._ask()
        return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]

    def _ask(self) -> None:
        import optuna

        trial = self.optuna.ask()
        point = {path: suggest(trial, path, levels) for path, levels in self.study.space.items()}
        try:
            specs = [TrialSpec(point, seed, self.study.trial_config(point, seed)) for seed in self.study.seeds]
        except ValueError as e:  # a sampled value the config refuses (e.g. out of a setting's range)
            self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.refused.append((f"optuna trial {trial.number}", str(e).splitlines()[0]))
            return
        keys = list(dict.fromkeys(s.config_hash for s in specs))  # seeds that give one config count once
        p = Point(trial.number, trial, keys)
        self.points[trial.number] = p
        for spec in {s.config_hash: s for s in specs}.values():
            self.by_key.setdefault(spec.config_hash, set()).add(trial.number)
            # a trial already final, or running for an earlier point the sampler proposed again,
            # is not started twice: this point waits for it
            tags = {OPTUNA_TRIAL: str(trial.number)}
            if spec.config_hash in self.finals:
                if RESUMES in trial.user_attrs:  # its run, final before the interrupt, now belongs to this trial
                    self.adopted[spec.config_hash] = tags
            elif spec.config_hash not in self.live:
                self.live.add(spec.config_hash)
                self.queue.append(Planned(spec.config_hash, spec, trial.number, tags))
        self._tell_if_done(p)

    # ------------------------------------------------------------------ results

    def on_trial_result(self, key: str, epoch: int, metrics: dict[str, float]) -> Decision:
        metric = self.objectives[0]
        if self.pruner_kind == "none" or metric not in metrics:
            return CONTINUE
        prune: list[str] = []
        with self._storage():
            for number in sorted(self.by_key.get(key, ())):
                p = self.points[number]
                if p.told:
                    continue
                values = p.reported.setdefault(epoch, {})
                values[key] = metrics[metric]
                live = [k for k in p.keys if k not in self.finals]
                if not set(live) <= set(values):
                    continue  # wait for every live seed to reach this epoch
                p.trial.report(sum(values[k] for k in live) / len(live), epoch)
                if p.trial.should_prune():
                    prune += [k for k in live if k not in prune]
        return Decision(tuple(prune))

    def on_trial_complete(self, key: str, state: str, metrics: dict[str, float]) -> None:
        self.finals[key] = (state, metrics)
        self.live.discard(key)
        with self._storage():
            for number in sorted(self.by_key.get(key, ())):
                self._tell_if_done(self.points[number])

    def _tell_if_done(self, p: Point) -> None:
        """Once every seed of a point is final, tell Optuna the mean final objective(s)."""
        import optuna

        finals = [self.finals.get(k) for k in p.keys]
        if p.told or any(f is None for f in finals):
            return
        states = {state for state, _ in finals}
        if "pruned" in states:
            self.optuna.tell(p.number, state=optuna.trial.TrialState.PRUNED)
        elif states != {"completed"} or any(k not in m for _, m in finals for k in self.objectives):
            self.optuna.tell(p.number, state=optuna.trial.TrialState.FAIL)
        else:
            values = [sum(m[k] for _, m in finals) / len(finals) for k in self.objectives]
            self.optuna.tell(p.number, values if len(values) > 1 else values[0])
        p.told = True
        for k in p.keys:
            self.by_key.get(k, set()).discard(p.number)

    def interrupt(self) -> None:
        """Every point not told is marked interrupted and told FAIL; it is asked again on resume."""
        import optuna

        open_points = {n for n, p in self.points.items() if not p.told}
        if not open_points:
            return
        with self._storage():
            self._mark_interrupted(open_points)
            for n in sorted(open_points):
                self.optuna.tell(n, state=optuna.trial.TrialState.FAIL)
                self.points[n].told = True
        self.queue.clear()


def suggest(trial: Any, path: str, levels: list[Any] | Range) -> Any:
    """Optuna's choice for one factor. Mapping levels travel as JSON strings (Optuna's
    categorical choices must be plain values)."""
    if isinstance(levels, Range):
        if levels.is_int:
            return trial.suggest_int(
                path, int(levels.low), int(levels.high), step=int(levels.step or 1), log=levels.log
            )
        return trial.suggest_float(path, levels.low, levels.high, step=levels.step, log=levels.log)
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in levels):
        return trial.suggest_categorical(path, levels)
    choice = trial.suggest_categorical(path, [json.dumps(v, sort_keys=True) for v in levels])
    return json.loads(choice)
