"""MkDocs hook: the repository's committed reports, benchmark write-ups and study files, served
beside the pages under the same relative paths as in the repository (reports/collapse/...,
benchmarks/PACK.md, studies/collapse.yaml), so pages link to them and show the report's figures
without copies under docs/. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SERVED = ("reports/collapse/*", "reports/disentanglement/*", "benchmarks/*.md", "studies/*.yaml")


def on_files(files: Files, config) -> Files:
    for pattern in SERVED:
        for path in sorted(ROOT.glob(pattern)):
            if path.suffix in (".md", ".png", ".yaml", ".csv", ".tex", ".html"):
                uri = path.relative_to(ROOT).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
