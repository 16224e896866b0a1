"""Workloads for `aiollmux simulate`: synthetic generators and trace files.

A workload is a list of jobs (one request for one model, with the GPU seconds it takes
to serve) plus, for closed-loop clients (chat users, a batch job), sessions that make
their next request once the previous one has ended. A generator is a pure function of
its parameters and a seed, so every policy is shown exactly the same clients.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

MIN_SERVICE: Final = 0.05  # seconds: even an empty completion takes a forward pass
ZERO_ALLOWED: Final = frozenset({"users", "batch_size"})


class WorkloadError(ValueError):
    """A bad workload parameter or trace line, with where it is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    time: float  # when the request arrives
    model: str
    service: float  # GPU seconds to serve it once it runs
    session: int | None = None  # the closed-loop client that made it


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """Generator knobs (`--param KEY=VALUE`); times in seconds, services exponential.

    Each generator has its own defaults (`DEFAULTS`); a knob it does not use is ignored.
    """

    duration: float = 4 * 3600.0  # requests arrive during this long
    service: float = 2.0  # mean GPU seconds per request
    rate: float = 0.1  # poisson: requests/s per model; bursty: the rate inside a burst
    on: float = 300.0  # bursty: mean length of a burst
    off: float = 300.0  # bursty: mean pause between bursts
    users: int = 2  # chat, batch: chat users per model
    think: float = 30.0  # chat, batch: mean think time between an answer and the next question
    batch_size: int = 0  # batch: requests of the job on the first model; 0: until `duration`
    batch_concurrency: int = 4  # batch: requests the job keeps outstanding


class Session:
    """A closed-loop client: `pause` after a request ends, it makes the next one."""

    def __init__(
        self,
        *,
        model: str,
        pause: float,
        service: float,
        until: float,
        count: int | None,
        rng: random.Random,
    ) -> None:
        self.model = model
        self.pause = pause
        self.service = service
        self.until = until
        self.remaining = count
        self.rng = rng

    def job(self, after: float, session: int) -> Job | None:
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        time = after + (_exponential(self.rng, self.pause) if self.pause > 0 else 0.0)
        if time > self.until:
            return None
        service = _service(self.rng, self.service)
        return Job(time=time, model=self.model, service=service, session=session)


@dataclass(slots=True)
class Workload:
    name: str
    models: tuple[str, ...]
    jobs: list[Job]  # open-loop requests and each session's first
    sessions: dict[int, Session] = field(default_factory=dict)

    def follow(self, job: Job, ended: float) -> Job | None:
        """The next request of the session that made `job`, which ended at `ended`."""
        if job.session is None:
            return None
        return self.sessions[job.session].job(ended, job.session)

    def start_session(self, session: Session, at: float) -> None:
        number = len(self.sessions)
        self.sessions[number] = session
        first = session.job(at, number)
        if first is not None:
            self.jobs.append(first)


def _exponential(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1 / mean) if mean > 0 else 0.0


def _service(rng: random.Random, mean: float) -> float:
    return max(MIN_SERVICE, _exponential(rng, mean))


def model_names(count: int) -> tuple[str, ...]:
    return tuple(f"m{index}" for index in range(1, count + 1))


def poisson(models: tuple[str, ...], params: Params, rng: random.Random) -> Workload:
    """Each model gets independent Poisson arrivals at `rate`."""
    jobs: list[Job] = []
    for model in models:
        time = _exponential(rng, 1 / params.rate)
        while time < params.duration:
            jobs.append(Job(time=time, model=model, service=_service(rng, params.service)))
            time += _exponential(rng, 1 / params.rate)
    return Workload("poisson", models, sorted(jobs, key=lambda job: job.time))


def bursty(models: tuple[str, ...], params: Params, rng: random.Random) -> Workload:
    """Each model alternates pauses (mean `off`) and bursts (mean `on`) of Poisson
    arrivals at `rate`; the models' bursts are independent, so they sometimes overlap."""
    jobs: list[Job] = []
    for model in models:
        time = _exponential(rng, params.off) * rng.random()  # join mid-pause
        while time < params.duration:
            burst_end = min(params.duration, time + _exponential(rng, params.on))
            time += _exponential(rng, 1 / params.rate)
            while time < burst_end:
                jobs.append(Job(time=time, model=model, service=_service(rng, params.service)))
                time += _exponential(rng, 1 / params.rate)
            time = burst_end + _exponential(rng, params.off)
    return Workload("bursty", models, sorted(jobs, key=lambda job: job.time))


def chat(models: tuple[str, ...], params: Params, rng: random.Random) -> Workload:
    """`users` people per model: ask, read the answer, think (mean `think`), ask again."""
    workload = Workload("chat", models, [])
    for model in models:
        for _ in range(params.users):
            _add_user(workload, model, params, rng)
    workload.jobs.sort(key=lambda job: job.time)
    return workload


def _add_user(workload: Workload, model: str, params: Params, rng: random.Random) -> None:
    user = Session(
        model=model,
        pause=params.think,
        service=params.service,
        until=params.duration,
        count=None,
        rng=random.Random(rng.getrandbits(64)),
    )
    workload.start_session(user, 0.0)


def batch(models: tuple[str, ...], params: Params, rng: random.Random) -> Workload:
    """A batch job on the first model (`batch_size` requests, or until `duration`;
    `batch_concurrency` outstanding) while chat users (as in `chat`) use the others."""
    workload = Workload("batch", models, [])
    size, workers = params.batch_size, params.batch_concurrency
    for worker in range(workers):
        count = size // workers + (1 if worker < size % workers else 0) if size else None
        job = Session(
            model=models[0],
            pause=0.0,
            service=params.service,
            until=math.inf if size else params.duration,
            count=count,
            rng=random.Random(rng.getrandbits(64)),
        )
        workload.start_session(job, 0.0)
    for model in models[1:]:
        for _ in range(params.users):
            _add_user(workload, model, params, rng)
    workload.jobs.sort(key=lambda job: job.time)
    return workload


Generator = Callable[[tuple[str, ...], Params, random.Random], Workload]
GENERATORS: Final[Mapping[str, Generator]] = {
    "poisson": poisson,
    "bursty": bursty,
    "chat": chat,
    "batch": batch,
}
# bursty: an agent or a script per model, firing short requests for minutes at a time.
DEFAULTS: Final[Mapping[str, Params]] = {
    "poisson": Params(),
    "bursty": Params(rate=1.0, service=1.0),
    "chat": Params(),
    "batch": Params(),
}


def generate(name: str, models: int, params: Params, seed: int) -> Workload:
    return GENERATORS[name](model_names(models), params, random.Random(seed))


def parse_params(settings: Mapping[str, str], base: Params | None = None) -> Params:
    """`--param` values over `base` (a generator's defaults); numbers above 0 (counts of
    users and of batch requests may be 0)."""
    fields = {f.name: f for f in dataclasses.fields(Params)}
    values: dict[str, float | int] = {}
    for key, text in settings.items():
        if key not in fields:
            raise WorkloadError(f"unknown parameter {key!r}; expected one of {', '.join(fields)}")
        try:
            number = int(text) if fields[key].type == "int" else float(text)
        except ValueError:
            raise WorkloadError(f"{key}: expected a number, got {text!r}") from None
        low = 0 if key in ZERO_ALLOWED else math.ulp(0)
        if not math.isfinite(number) or number < low:
            expected = "0 or more" if low == 0 else "greater than 0"
            raise WorkloadError(f"{key}: expected a number {expected}, got {text!r}")
        values[key] = number
    return dataclasses.replace(base or Params(), **values)  # type: ignore[arg-type]  # names checked


def load_trace(path: Path) -> Workload:
    """JSON lines `{"time": s, "model": id, "service": s}`; blank lines are skipped."""
    jobs: list[Job] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            jobs.append(_trace_job(line, f"{path}:{number}"))
    if not jobs:
        raise WorkloadError(f"{path}: no requests in the trace")
    jobs.sort(key=lambda job: job.time)
    models = tuple(dict.fromkeys(job.model for job in jobs))
    return Workload(path.name, models, jobs)


def _trace_job(line: str, where: str) -> Job:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise WorkloadError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise WorkloadError(f"{where}: expected an object with time, model and service")
    model = record.get("model")
    if not isinstance(model, str) or not model:
        raise WorkloadError(f"{where}: model: expected a non-empty string")
    return Job(
        time=_seconds(record, "time", where),
        model=model,
        service=_seconds(record, "service", where),
    )


def _seconds(record: Mapping[str, object], key: str, where: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadError(f"{where}: {key}: expected a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise WorkloadError(f"{where}: {key}: expected a finite number of 0 or more")
    return float(value)
