"""Where the checkpoints to evaluate come from, and getting each one onto local disk.

`parse(specs)` turns `--checkpoints` values into `Checkpoint`s: `released` (the registry,
`dmas_repro.model.released`), hub ids (`owner/name[@revision]`), local Hugging Face
directories, dmas-repro checkpoint directories, and training run directories (`runs/NAME`:
every `checkpoints/step_*`, kind base, and the SFT stage under `sft/`, kind instruct).
Reference families of other suites (`pythia-1.4b`, `olmo-1b`, `tinyllama-1.1b`, ...: the
reference registry, `released.reference_rows`) and their labels (`pythia-1.4b-step1000`) name
checkpoints of other architectures and tokenizers (`own_model` False): the driver runs their
lm-eval benchmarks exactly as for DMaS and skips the parts that need our model.

`Fetcher.iterate(checkpoints)` yields each checkpoint with a future of its local HF directory:
hub repos are downloaded (weights and tokenizer only, resumable, sha256 checked against the
Hub's metadata), our own checkpoints are exported with `model.hf.save_hf`. The next checkpoint is
fetched in a background thread while the current one is evaluated (when the caller's `take` agrees:
the driver claims its units first); with `max_disk` set, what this run downloaded (evicted through
huggingface_hub's cache API, one revision) or exported is deleted once evaluated, and a prefetch
waits when two checkpoints would not fit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import UserError
from ..core.files import check_free_space, dir_size_bytes, file_sha256
from ..model import hf, hub
from ..model import released as registry
from ..model import weights as checkpoint
from ..model.released import reference_families, reference_rows
from ..train import layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    label: str  # its name in the results store (unique within a run)
    kind: str  # base | instruct
    step: int | None
    tokens: int | None
    source: str  # what the user named: a hub id or a local path
    repo_id: str | None = None  # set for hub checkpoints
    revision: str | None = None
    path: Path | None = None  # set for local checkpoints
    export: bool = False  # a dmas-repro checkpoint directory: exported to HF format on the fly
    own_model: bool = True  # our architecture and GPT-2 tokenizer; False (a reference model): benchmarks only
    named: bool = False  # a hub id the user typed that no registry knows: checked before the run (`check_named`)


@dataclass
class Local:
    """A checkpoint on local disk as a Hugging Face directory, ready for evaluation."""

    ckpt: Checkpoint
    path: Path
    model_sha: str  # sha256 over the weight files' sha256s (see `model_sha`)
    owned: bool  # created by this run (download or export): may be deleted after evaluation
    size: int
    verified: bool  # weights checked against the Hub's sha256 metadata
    seconds: float | None = None  # how long fetching it took (download or export, and hashing)


# ---------------------------------------------------------------- the registry
def released() -> list[Checkpoint]:
    """The released checkpoints, in training order (base first, then the instruct model)."""
    return [Checkpoint(label=r["label"], kind=r["kind"], step=r["step"], tokens=r["tokens"], source=r["repo_id"],
                       repo_id=r["repo_id"], revision=r["revision"]) for r in registry.rows()]


def reference(family: str | None = None) -> list[Checkpoint]:
    """Reference checkpoints of other suites (all, or one family's), each at a hub revision."""
    return [Checkpoint(label=r["label"], kind=r["kind"], step=r["step"], tokens=r["tokens"],
                       source=f"{r['repo_id']}@{r['revision']}" if r["revision"] else r["repo_id"],
                       repo_id=r["repo_id"], revision=r["revision"], own_model=False)
            for r in reference_rows(family)]


# ---------------------------------------------------------------- parsing --checkpoints
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_label(s: str) -> str:
    return _SAFE.sub("_", s).strip("._") or "checkpoint"


def _run_checkpoints(run: Path) -> list[Checkpoint]:
    """Every checkpoint of a training run dir: checkpoints/step_* (base), then the SFT stage (instruct);
    a stage without checkpoints contributes its final hf/ export."""
    out = []
    for stage, kind, prefix in layout.stages(run):
        for d in layout.stage_models(stage):
            step, tokens = layout.step_and_tokens(d)
            out.append(Checkpoint(label=safe_label(f"{prefix}-{d.name}"), kind=kind, step=step, tokens=tokens,
                                  source=str(d), path=d, export=checkpoint.is_model_dir(d)))
    return out


def parse_one(spec: str, registry: list[Checkpoint] | None = None) -> list[Checkpoint]:
    registry = released() if registry is None else registry
    by_repo = {c.repo_id: c for c in registry}
    by_label = {c.label: c for c in registry}
    if spec == "released":
        return list(registry)
    if spec in ("released-base", "released-instruct"):
        return [c for c in registry if c.kind == spec.split("-")[1]]
    if spec in by_label:
        return [by_label[spec]]
    if spec in reference_families():
        return reference(spec)
    refs = reference()
    for c in refs:
        if spec == c.label:
            return [c]
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p}: not a directory")
        if hf.is_hf_dir(p) or checkpoint.is_model_dir(p):
            step, tokens = layout.step_and_tokens(p)
            label, kind = layout.label_of(p)
            label = safe_label(label)
            # a training checkpoint also holds a config.json (the run's): our model files win
            return [Checkpoint(label=label, kind=kind, step=step, tokens=tokens, source=spec, path=p,
                               export=checkpoint.is_model_dir(p))]
        if layout.is_run_dir(p):
            found = _run_checkpoints(p)
            if not found:
                raise UserError(f"{p}: a run directory with no complete checkpoint (checkpoints/step_*/ or hf/)")
            return found
        raise UserError(f"{p}: neither a Hugging Face model directory, a dmas-repro checkpoint, nor a run directory")
    repo_id, _, revision = spec.partition("@")
    if layout.names_local_path(repo_id):  # runs/tiny when runs/ exists, ./x, /x, a/b/c: a path, not a hub id
        if "/" in spec or spec.startswith((".", "~")):
            raise UserError(f"--checkpoints {spec}: no such directory (relative to {Path.cwd()})")
        raise UserError(f"--checkpoints {spec!r}: no such directory, not a registry label (released, step-5.1k, "
                        "...) or reference family, and not a hub id (owner/name)")
    if hub.looks_like_repo_id(repo_id):
        if repo_id in by_repo:
            c = by_repo[repo_id]
            return [replace(c, revision=revision or c.revision, source=spec)]
        known = [r for r in reference_rows() if r["repo_id"] == repo_id]
        if known:  # another suite's model: benchmarks only, its step and tokens from a stepN revision
            hit = [c for c in refs if revision and c.repo_id == repo_id and c.revision == revision]
            if hit:
                return [replace(hit[0], source=spec)]
            m = re.match(r"step(\d+)(?:-|$)", revision or "")
            step = int(m.group(1)) if m else None
            label = (f"{known[0]['family']}-step{step}" if m else f"{known[0]['family']}-main" if not revision
                     else f"{repo_id.replace('/', '--')}@{revision}")
            return [Checkpoint(label=safe_label(label), kind="base", step=step,
                               tokens=None if step is None else step * known[0]["tokens_per_step"], source=spec,
                               repo_id=repo_id, revision=revision or None, own_model=False)]
        return [Checkpoint(label=safe_label(repo_id.replace("/", "--")), kind=layout.kind_of(repo_id), step=None,
                           tokens=None, source=spec, repo_id=repo_id, revision=revision or None, named=True)]
    raise UserError(f"--checkpoints {spec!r}: no such directory and not a hub id (owner/name)")


def parse(specs: list[str]) -> list[Checkpoint]:
    """All checkpoints named by `specs` (each may be a comma-separated list), in order, no repeats."""
    registry = released()
    out: list[Checkpoint] = []
    for spec in specs:
        for part in spec.split(","):
            if part.strip():
                out.extend(parse_one(part.strip(), registry))
    seen: dict[str, Checkpoint] = {}
    for c in out:
        if c.label in seen and seen[c.label].source != c.source:
            raise UserError(f"two checkpoints would be stored under the same name {c.label!r}: "
                            f"{seen[c.label].source} and {c.source}; pass one of them by another path")
        seen.setdefault(c.label, c)
    return list(seen.values())


def shard(ckpts: list[Checkpoint], spec: str | None) -> list[Checkpoint]:
    """`--shard i/N` (0 <= i < N): every N-th checkpoint starting at i."""
    if not spec:
        return ckpts
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard {spec!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    return ckpts[i::n]


def parse_size(s: str | None) -> int | None:
    """'20GB', '15G', '500MiB', '123' (bytes) -> bytes."""
    if s is None:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", s, re.IGNORECASE)
    if not m:
        raise UserError(f"--max-disk {s!r}: expected a size such as 20GB, 15G or 500MiB")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)


# ---------------------------------------------------------------- hashing
def model_sha(weight_shas: dict[str, str]) -> str:
    """One hash of a model's weights: sha256 over "name sha256" lines of its safetensors files."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(weight_shas.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def foreign_weight_files(hf_dir: Path) -> list[Path]:
    """The weight files of another suite's HF directory: safetensors when it has them, else pytorch_model*.bin."""
    hf_dir = Path(hf_dir)
    if (hf_dir / hf.SAFE_SINGLE).is_file() or (hf_dir / hf.SAFE_INDEX).is_file():
        return hf.weight_files(hf_dir)
    index = hf_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index}: unreadable shard index ({e})") from None
        files = [hf_dir / n for n in names]
    else:
        files = [hf_dir / "pytorch_model.bin"]
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: missing (no model.safetensors or pytorch_model.bin in {hf_dir})")
    return files


def weight_shas(hf_dir: Path, own_model: bool = True) -> dict[str, str]:
    files = hf.weight_files(hf_dir) if own_model else foreign_weight_files(hf_dir)
    return {f.name: file_sha256(f) for f in files}


def check_foreign(hf_dir: Path) -> None:
    """Another suite's model: a config transformers knows (no remote code) and weight files that are there."""
    from transformers import AutoConfig

    cfg = Path(hf_dir) / "config.json"
    if not cfg.is_file():
        raise UserError(f"{cfg}: no config.json (is {hf_dir} a Hugging Face model directory?)")
    try:
        AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{cfg}: transformers cannot read this config without remote code "
                        f"({str(e).splitlines()[0]})") from None
    files = foreign_weight_files(hf_dir)
    if files[0].suffix == ".safetensors":
        _check_safetensors(files)


def check_loadable(hf_dir: Path, own_model: bool = True) -> None:
    """Fail with one clear message on a config of another architecture or a corrupt/truncated weight file.
    `own_model` False (a reference model of another suite): see `check_foreign`."""
    if not own_model:
        return check_foreign(hf_dir)
    hf.read_config(hf_dir, pad_vocab=False)
    _check_safetensors(hf.weight_files(hf_dir))


def _check_safetensors(files: list[Path]) -> None:
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_slice(key)
        except SafetensorError as e:
            raise UserError(f"{f}: corrupt or truncated safetensors file ({e})") from None
        except OSError as e:
            raise UserError(f"{f}: cannot read ({e})") from None


# ---------------------------------------------------------------- the Hub
@dataclass
class HubFiles:
    commit: str | None
    sizes: dict[str, int]  # the files we download -> bytes
    sha256: dict[str, str]  # LFS files -> sha256 of their content

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def hub_files(repo_id: str, revision: str | None, patterns: list[str] | None = None) -> HubFiles | None:
    """Sizes and sha256s of the files `hub.download` fetches (`patterns`, default `hub.MODEL_FILES`); None
    when the Hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model repository on the Hugging Face Hub") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision!r} on the Hugging Face Hub") from None
    except GatedRepoError:
        raise UserError(f"{repo_id}: gated repository; log in with `hf auth login` first") from None
    except Exception:  # offline, no network, hub down: fall back on the local cache
        return None
    sizes, shas = {}, {}
    for s in info.siblings or []:
        if any(fnmatch.fnmatch(s.rfilename, pat) for pat in (hub.MODEL_FILES if patterns is None else patterns)):
            sizes[s.rfilename] = int(s.size or 0)
            if s.lfs is not None and getattr(s.lfs, "sha256", None):
                shas[s.rfilename] = s.lfs.sha256
    return HubFiles(commit=info.sha, sizes=sizes, sha256=shas)


def download_patterns(ck: Checkpoint, meta: HubFiles | None) -> list[str]:
    """What to download: `hub.MODEL_FILES` for our checkpoints; for another suite's, also pytorch_model*.bin
    when the revision has no safetensors (and when the Hub cannot say: the cache is used as it is)."""
    if ck.own_model:
        return hub.MODEL_FILES
    extra = hub.EXTRA_TOKENIZER_FILES
    if meta is not None and any(n.endswith(".safetensors") for n in meta.sizes):
        return hub.MODEL_FILES + extra
    return hub.MODEL_FILES + hub.BIN_FILES + extra


def _hub_cache_root(cache_dir: Path | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)


def repo_cache_dir(repo_id: str, cache_dir: Path | None) -> Path:
    return _hub_cache_root(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def evict(repo_id: str, commit: str, cache_dir: Path | None) -> None:
    """Delete one downloaded revision from the Hugging Face cache (`scan_cache_dir(...).delete_revisions`:
    its snapshot, refs pointing at it, blobs no other revision uses; the repo folder when it was the last)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:
        info = scan_cache_dir(_hub_cache_root(cache_dir))
    except (CacheNotFound, CorruptedCacheException) as e:
        log.warning(f"{repo_id}: not evicted from the cache ({e})")
        return
    if not any(r.repo_id == repo_id and r.repo_type == "model" and commit in {v.commit_hash for v in r.revisions}
               for r in info.repos):
        log.warning(f"{repo_id}@{commit}: not in the cache any more; nothing to evict")
        return
    info.delete_revisions(commit).execute()


# ---------------------------------------------------------------- fetching
class Fetcher:
    """Materialises checkpoints as local HF directories (download or export), prefetching the next.

    `cache_dir`: hub downloads go there (default: the Hugging Face cache) and exports under
    `cache_dir/exports` (default: `export_dir`). `max_disk`: bytes that downloads and exports of
    this run may hold at once; evaluated ones are then deleted.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, export_dir: str | os.PathLike,
                 max_disk: int | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.export_dir = Path(cache_dir) / "exports" if cache_dir else Path(export_dir)
        self.max_disk = max_disk
        self._meta: dict[str, HubFiles | None] = {}

    # sizes ------------------------------------------------------------
    def _hub_meta(self, ck: Checkpoint) -> HubFiles | None:
        key = f"{ck.repo_id}@{ck.revision}"
        if key not in self._meta:
            if ck.own_model:
                self._meta[key] = hub_files(ck.repo_id, ck.revision)
            else:  # either weight format may be there: keep the one download_patterns picks
                meta = hub_files(ck.repo_id, ck.revision, hub.MODEL_FILES + hub.BIN_FILES + hub.EXTRA_TOKENIZER_FILES)
                if meta is not None:
                    keep = download_patterns(ck, meta)
                    meta.sizes = {n: b for n, b in meta.sizes.items() if any(fnmatch.fnmatch(n, p) for p in keep)}
                self._meta[key] = meta
        return self._meta[key]

    def estimate(self, ck: Checkpoint) -> int:
        """Bytes this checkpoint will add on disk (0: already local and kept)."""
        if ck.repo_id:
            if repo_cache_dir(ck.repo_id, self.cache_dir).exists() and self.max_disk is None:
                return 0
            meta = self._hub_meta(ck)
            return meta.total if meta else 0
        if ck.export:
            return (ck.path / checkpoint.WEIGHTS).stat().st_size
        return 0

    # one checkpoint ---------------------------------------------------
    def fetch(self, ck: Checkpoint) -> Local:
        t0 = time.perf_counter()
        if ck.repo_id:
            local = self._download(ck)
        elif ck.export:
            local = self._export(ck)
        else:
            local = Local(ck, ck.path, model_sha(weight_shas(ck.path, ck.own_model)), owned=False, size=0,
                          verified=False)
        local.seconds = time.perf_counter() - t0
        return local

    def _check_budget(self, ck: Checkpoint, need: int, where: Path) -> None:
        if self.max_disk is not None and need > self.max_disk:
            raise UserError(f"{ck.label} needs {need / 1e9:.2f} GB on disk, more than --max-disk "
                            f"{self.max_disk / 1e9:.2f} GB")
        if need:
            check_free_space(where, need, f"checkpoint {ck.label}")

    def _download(self, ck: Checkpoint) -> Local:
        meta = self._hub_meta(ck)
        repo_dir = repo_cache_dir(ck.repo_id, self.cache_dir)
        revision = meta.commit if (meta is not None and meta.commit) else ck.revision
        # this revision was there before the run (then it is not this run's to evict)
        was_cached = (repo_dir / "snapshots" / revision).is_dir() if meta is not None and meta.commit \
            else repo_dir.exists()
        if meta is not None:
            self._check_budget(ck, 0 if was_cached else meta.total, _hub_cache_root(self.cache_dir))
        else:
            log.info(f"{ck.label}: the Hub cannot be reached; using the local cache (hashes not checked)")
        if meta is not None:
            log.info(f"{ck.label}: {'checking' if was_cached else 'downloading'} {ck.repo_id}"
                     + (f"@{revision}" if revision else ""))
        if ck.own_model:
            path = hub.download(ck.repo_id, revision=revision, cache_dir=self.cache_dir)
        else:
            path = hub.download(ck.repo_id, revision=revision, cache_dir=self.cache_dir,
                                allow_patterns=download_patterns(ck, meta))
        shas = weight_shas(path, ck.own_model)
        verified = False
        if meta is not None:
            bad = [name for name, sha in shas.items() if meta.sha256.get(name) not in (None, sha)]
            if bad:
                for name in bad:  # drop the damaged blob so that the next run downloads it again
                    f = path / name
                    blob = f.resolve()
                    f.unlink(missing_ok=True)
                    if blob != f:
                        blob.unlink(missing_ok=True)
                raise UserError(f"{ck.repo_id}: sha256 of {', '.join(bad)} differs from the Hub's "
                                "(corrupt download); deleted, rerun to download again")
            verified = all(name in meta.sha256 for name in shas)
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return Local(ck, path, model_sha(shas), owned=not was_cached, size=size, verified=verified)

    def _export(self, ck: Checkpoint) -> Local:
        out = self.export_dir / ck.label
        self._check_budget(ck, self.estimate(ck), self.export_dir)
        log.info(f"{ck.label}: exporting {ck.path} to {out}")
        # tensor by tensor (no model in memory next to the one evaluated); a killed run's leftover is replaced
        checkpoint.export_hf(ck.path, out, overwrite=True)
        return Local(ck, out, model_sha(weight_shas(out)), owned=True, size=dir_size_bytes(out),
                     verified=False)

    def check_named(self, ck: Checkpoint) -> None:
        """A hub id the user typed (`Checkpoint.named`), before anything is written: it must be in the local
        cache or exist on the Hub; else one error that says it is neither a local directory nor a hub id
        that can be had (as `chat` and `export-hf` say, `train.layout.model_dir_of`)."""
        from huggingface_hub import try_to_load_from_cache

        if not ck.named:
            return
        if isinstance(try_to_load_from_cache(ck.repo_id, "config.json", cache_dir=self.cache_dir,
                                             revision=ck.revision), str):
            return
        where = f"no such local directory (relative to {Path.cwd()}), and as a Hugging Face hub id"
        try:
            meta = self._hub_meta(ck)
        except UserError as e:
            raise UserError(f"--checkpoints {ck.source}: {where}: {str(e).removeprefix(f'{ck.repo_id}: ')}") from None
        if meta is None:
            raise UserError(f"--checkpoints {ck.source}: {where}: not in the local cache and the Hub cannot be "
                            "reached (offline, or HF_HUB_OFFLINE=1)")

    def release(self, local: Local) -> None:
        """After evaluation: delete exports always, downloads of this run when --max-disk is set (through
        huggingface_hub's cache API: the revision's snapshot, and the blobs no other revision uses)."""
        if not local.owned:
            return
        if local.ckpt.export:
            shutil.rmtree(local.path, ignore_errors=True)
        elif self.max_disk is not None and local.ckpt.repo_id:
            log.info(f"{local.ckpt.label}: evicting {local.ckpt.repo_id}@{local.path.name} from the cache "
                     "(--max-disk)")
            evict(local.ckpt.repo_id, local.path.name, self.cache_dir)

    # a sequence with prefetch ------------------------------------------
    def _fits_both(self, current: Checkpoint, nxt: Checkpoint) -> bool:
        if self.max_disk is None:
            return True
        try:
            return self.estimate(current) + self.estimate(nxt) <= self.max_disk
        except (UserError, OSError):
            return False

    def iterate(self, ckpts: list[Checkpoint], take: Callable[[Checkpoint], bool] | None = None
                ) -> Iterator[tuple[Checkpoint, Future | None]]:
        """Yield (checkpoint, future of its Local); the next one is fetched while the caller
        evaluates this one. The caller must call `release` on each Local it got.

        `take(checkpoint)` is asked (in the caller's thread) just before a checkpoint's fetch starts; one it
        refuses (another process evaluates it) is not fetched and comes with None instead of a future."""
        if not ckpts:
            return
        take = take or (lambda ck: True)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch")
        taken: dict[int, bool] = {}

        def start(i: int) -> Future | None:
            if i not in taken:
                taken[i] = take(ckpts[i])
            return pool.submit(self.fetch, ckpts[i]) if taken[i] else None

        nxt: Future | None = start(0)
        try:
            for i, ck in enumerate(ckpts):
                if taken.get(i) is False:
                    fut = None
                else:
                    fut = nxt if nxt is not None else start(i)
                nxt = None
                # prefetch the next one; when this one is not evaluated here, the next one starts now
                if i + 1 < len(ckpts) and (fut is None or self._fits_both(ck, ckpts[i + 1])):
                    nxt = start(i + 1)
                yield ck, fut
        finally:
            if nxt is not None:  # stopped early: clean up a prefetch nobody will evaluate
                nxt.cancel()
                _release_when_done(self, nxt)
            pool.shutdown(wait=False, cancel_futures=True)

def _release_when_done(fetcher: Fetcher, fut: Future) -> None:
    """A prefetch that is no longer wanted (the run stopped): clean up what it made."""
    def cb(f: Future):
        if not f.cancelled() and f.exception() is None:
            fetcher.release(f.result())
    fut.add_done_callback(cb)
