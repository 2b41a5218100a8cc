"""Promises the repository makes about itself."""

import re
from pathlib import Path

import yaml

from taskprune.pipeline import NAMES, dvc_yaml

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci_command = next(line for line in (REPO / ".ci/run").read_text().splitlines() if "pytest" in line and "pip" in line)
    readme_commands = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    assert ci_command.strip() in [c.strip() for c in readme_commands]


def test_readme_install_command_uses_the_lock_with_exact_torch():
    assert "pip install -r requirements.lock -e . && .venv/bin/taskprune run" in (REPO / "README.md").read_text()
    pins = (REPO / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in pins


def test_library_does_not_import_prefect():
    offenders = [p for p in (REPO / "taskprune").rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(prefect|flows|prefect_tasks)\b", p.read_text(), flags=re.M)]
    assert offenders == []


def test_model_specific_names_only_in_architectures():
    names = re.compile(r"q_proj|gate_proj|c_attn|model\.layers|transformer\.h\b|decoder\.layers")
    offenders = [p for p in (REPO / "taskprune").rglob("*.py")
                 if "architectures" not in p.parts and names.search(p.read_text())]
    assert offenders == []


def test_dvc_yaml_is_the_pipeline_table():
    """dvc.yaml is generated from taskprune/pipeline.py: regenerate it with `python -m taskprune.pipeline`."""
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(NAMES)
    assert all(spec["cmd"] == f"taskprune stage {name}" for name, spec in stages.items())


def test_readme_methods_table_is_the_registry():
    from taskprune.methods.catalogue import describe

    rows = describe()
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(f"`{v}`" if k == "method" else v.replace("|", "\\|") for k, v in row.items()) + " |"
              for row in rows]
    assert "\n".join(lines) in (REPO / "README.md").read_text()
