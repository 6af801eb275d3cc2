import pytest

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Every test writes models into its own store (tmp_path/store), never into the repo's models/."""
    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "store"))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A ~400 KB folder corpus cut from the stdlib: fast to tokenize and train on."""
    from mlxsuite.data.corpus import stdlib_files

    root, files = stdlib_files()
    folder = tmp_path_factory.mktemp("corpus")
    total = 0
    for p in files:
        if p.parent != root or p.stat().st_size > 60_000:
            continue
        text = p.read_text(encoding="utf-8", errors="ignore")
        (folder / (p.name + ".txt")).write_text(text)
        total += len(text)
        if total > 400_000:
            break
    return folder


def stdlib_text(chars: int = 100_000) -> str:
    """About `chars` characters of stdlib source (mid-size files of one folder): a small single-file corpus."""
    from mlxsuite.data.corpus import stdlib_files

    _, files = stdlib_files()
    return "".join(
        p.read_text(errors="ignore") for p in files if p.parent == files[0].parent and 2_000 < p.stat().st_size < 30_000
    )[:chars]


def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of `mlxsuite *args`, run in this process through the real entry point."""
    from mlxsuite.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
