"""What every figure script shares: its inputs (through `analysis`), the "skipped: run ..." rule,
and writing outputs with provenance.

A figure script is a module with `make(ctx: Context) -> None` that asks `ctx` for data
(`ctx.runs()`, `ctx.results()`, `ctx.items()`, `ctx.probes()`, `ctx.ablation(kind)`,
`ctx.weights()`) and saves with `ctx.save_figure(fig)` / `ctx.save_table(df)`. A missing input
raises `Skip` with the command that produces it; an unreadable one `analysis.io.BadInput` naming
the file and what to do; the builder reports either and goes on.

Provenance: every output records the sha256 of each input file it read, the git commit of the
code and the package versions — in the PNG text chunks, the PDF info dictionary, a comment line
of Markdown/LaTeX tables, and a sidecar `NAME.provenance.json`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

import analysis
from analysis.io import BadInput, Inputs
from dmas_repro.core.files import file_sha256

RUN_TRAIN = "`dmas-repro train` (or `make example-results`)"
RUN_EVAL = ("`dmas-repro eval-all-checkpoints --checkpoints runs/tiny --suite offline` "
            "(or `--checkpoints released` on a GPU)")
RUN_WEIGHTS = "`python -m analysis.weights runs/NAME --out results/weights/NAME.csv`"
RUN_ABLATE = "`dmas-repro ablate {kind}`"
RUN_IMPORT = ("`dmas-repro import-reference olmo-ladder FILES.csv --out results/reference` (and `pythia "
              "FILES.json`); the repository ships one in examples/results/reference")


class Skip(Exception):
    """An input of this figure is missing; the message names what to run."""


def _versions() -> dict:
    import matplotlib
    import scipy
    import seaborn

    return {"python": platform.python_version(), "pandas": pd.__version__, "scipy": scipy.__version__,
            "matplotlib": matplotlib.__version__, "seaborn": seaborn.__version__}


class Context:
    def __init__(self, inputs: Inputs, out: Path, n_boot: int = 200):
        self.inputs = inputs
        self.out = Path(out)
        self.n_boot = n_boot
        self.name = ""
        self.script = ""
        self.written: list[Path] = []
        self._used: dict[str, str] = {}
        self._hashes: dict[Path, str] = {}
        self._cache: dict[str, object] = {}
        from dmas_repro.core.runtime import git_commit

        self.commit = git_commit()
        self.versions = _versions()

    # ------------------------------------------------------------ bookkeeping
    def begin(self, name: str, script: str) -> None:
        self.name, self.script = name, script
        self._used, self.written = {}, []

    def use(self, *paths: Path) -> None:
        """Record input files (directories: every file under them) for this output's provenance."""
        for p in paths:
            p = Path(p)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                f = f.resolve()
                if f not in self._hashes:
                    self._hashes[f] = file_sha256(f)
                try:
                    key = str(f.relative_to(self.inputs.root))
                except ValueError:
                    key = str(f)
                self._used[key] = self._hashes[f]

    def provenance(self) -> dict:
        return {"output": self.name, "script": self.script, "git_commit": self.commit,
                "inputs_from": self.inputs.source, "inputs": dict(sorted(self._used.items())),
                "versions": self.versions, "built_by": "python -m paper_figures (make figures)"}

    # ------------------------------------------------------------ inputs
    def _cached(self, key, load):
        if key not in self._cache:
            try:
                self._cache[key] = load()
            except (FileNotFoundError, BadInput) as e:  # every entry that needs it gets the same answer
                self._cache[key] = e
        v = self._cache[key]
        if isinstance(v, Exception):
            raise v
        return v

    def runs(self, sft: bool | None = False) -> pd.DataFrame:
        """metrics.jsonl rows of the training runs (`run` column). sft=False: pretraining runs only,
        True: SFT stages only, None: both."""
        dirs = self.inputs.runs
        if sft is not None:
            dirs = [d for d in dirs if (d.name == "sft") == sft]
        if not dirs:
            what = "SFT stage (runs/NAME/sft)" if sft else "training run"
            raise Skip(f"no {what} with metrics.jsonl under {self.inputs.runs_root or 'runs/'}; run {RUN_TRAIN}")
        self.use(*[d / "metrics.jsonl" for d in dirs])
        root = self.inputs.runs_root
        key = "runs:" + ",".join(map(str, dirs))
        return self._cached(key, lambda: pd.concat(
            [analysis.load_metrics(d, run=str(d.relative_to(root)) if root and root in d.parents else d.name)
             for d in dirs], ignore_index=True))

    def results(self) -> pd.DataFrame:
        if not self.inputs.results:
            raise Skip(f"no results store (results/<suite>/results.csv); run {RUN_EVAL}")
        for d in self.inputs.results:
            self.use(d / "results.csv" if (d / "results.csv").is_file() else d / "results.parquet")
        return self._cached("results", lambda: analysis.load_results(self.inputs.results))

    def reference(self) -> pd.DataFrame:
        """Rows of the reference stores (other suites' published trajectories, `analysis.reference`)."""
        if not self.inputs.reference:
            raise Skip(f"no reference store (a results directory with reference.json); run {RUN_IMPORT}")
        from analysis import reference

        for d in self.inputs.reference:
            self.use(d / "results.csv" if (d / "results.csv").is_file() else d / "results.parquet",
                     d / "reference.json")
        return self._cached("reference", lambda: reference.load(self.inputs.reference))

    def items(self) -> pd.DataFrame:
        dirs = [d for d in self.inputs.results if (d / "items").is_dir()]
        if not dirs:
            raise Skip(f"no per-item records (results/<suite>/items/); run {RUN_EVAL}")
        res = self.results()
        self.use(*[d / "items" for d in dirs])

        def load():
            df = pd.concat([analysis.load_items(d) for d in dirs], ignore_index=True)
            return analysis.io.set_kinds(df, res)

        return self._cached("items", load)

    def probes(self) -> pd.DataFrame:
        files = [d / "probes.jsonl" for d in self.inputs.results if (d / "probes.jsonl").is_file()
                 and (d / "probes.jsonl").stat().st_size > 0]
        if not files:
            raise Skip(f"no probe outputs (results/<suite>/probes.jsonl); run {RUN_EVAL}")
        self.use(*files)
        return self._cached("probes", lambda: pd.concat([analysis.load_probes(f) for f in files], ignore_index=True))

    def ablation(self, kind: str) -> tuple[dict, pd.DataFrame, Path]:
        """(summary, metrics of its runs, directory) of the newest ablation of this kind."""
        found = []
        for d in self.inputs.ablations:
            summary = self._cached(f"summary:{d}", lambda d=d: analysis.io.read_summary(d / "summary.json"))
            if analysis.io.ablation_kind(summary) == kind:
                found.append(d)
        if not found:
            raise Skip(f"no `{kind}` ablation (a DIR/summary.json under runs/); run {RUN_ABLATE.format(kind=kind)}")
        d = max(found, key=lambda p: (p / "summary.json").stat().st_mtime)
        self.use(d / "summary.json", *sorted(d.rglob("metrics.jsonl")))
        summary, metrics = self._cached(f"ablation:{d}", lambda: analysis.load_ablation(d))
        return summary, metrics, d

    def weights(self) -> pd.DataFrame:
        """Weight-dynamics rows (analysis.weights): from results/weights/*.csv, else computed from
        the checkpoints of the training runs (only their small config/state files are hashed)."""
        if self.inputs.weights:
            self.use(*self.inputs.weights)
            return self._cached("weights", lambda: pd.concat(
                [analysis.io.read_weights_table(f).assign(run=f.stem) for f in self.inputs.weights],
                ignore_index=True))
        from analysis.weights import run_checkpoints, weight_dynamics

        runs = [(d, run_checkpoints(d)) for d in self.inputs.runs]
        runs = [(d, cks) for d, cks in runs if len(cks) >= 2]
        if not runs:
            raise Skip(f"no weight-dynamics table (results/weights/*.csv) and no run with 2+ checkpoints; run "
                       f"{RUN_TRAIN}, then {RUN_WEIGHTS}")
        for _, cks in runs:
            self.use(*[c / n for c in cks for n in ("model_config.json", "trainer_state.json") if (c / n).is_file()])
        return self._cached("weights", lambda: pd.concat(
            [weight_dynamics(cks).assign(run=d.name) for d, cks in runs], ignore_index=True))

    # ------------------------------------------------------------ outputs
    def _sidecar(self, stem: str) -> Path:
        f = self.out / f"{stem}.provenance.json"
        f.write_text(json.dumps(self.provenance(), indent=2) + "\n")
        return f

    def save_figure(self, fig, stem: str | None = None) -> list[Path]:
        """NAME.png and NAME.pdf with provenance metadata, plus NAME.provenance.json."""
        import matplotlib.pyplot as plt

        stem = stem or self.name
        self.out.mkdir(parents=True, exist_ok=True)
        prov = json.dumps(self.provenance(), sort_keys=True)
        title = f"dmas-repro {stem}"
        png, pdf = self.out / f"{stem}.png", self.out / f"{stem}.pdf"
        fig.savefig(png, metadata={"Title": title, "Software": "dmas-repro paper_figures",
                                   "Source": str(self.commit), "Comment": prov})
        fig.savefig(pdf, metadata={"Title": title, "Creator": "dmas-repro paper_figures", "Subject": prov,
                                   "Keywords": f"git_commit={self.commit}", "CreationDate": None})
        plt.close(fig)
        files = [png, pdf, self._sidecar(stem)]
        self.written += files
        return files

    def save_table(self, df: pd.DataFrame, stem: str | None = None, caption: str = "", index: bool = True,
                   floatfmt: str = ".4g") -> list[Path]:
        """NAME.md, NAME.tex and NAME.csv (+ NAME.provenance.json)."""
        stem = stem or self.name
        self.out.mkdir(parents=True, exist_ok=True)
        note = f"git {self.commit}; inputs sha256 in {stem}.provenance.json; from {self.inputs.source}"
        md = self.out / f"{stem}.md"
        md.write_text(f"<!-- {note} -->\n" + (f"{caption}\n\n" if caption else "")
                      + df.to_markdown(index=index, floatfmt=floatfmt) + "\n")
        tex = self.out / f"{stem}.tex"
        body = df.to_latex(index=index, float_format=lambda x: format(x, floatfmt), caption=caption or None,
                           label=f"tab:{stem}", escape=True)
        tex.write_text(f"% {note}\n" + body)
        csv = self.out / f"{stem}.csv"
        df.to_csv(csv, index=index)
        files = [md, tex, csv, self._sidecar(stem)]
        self.written += files
        return files
