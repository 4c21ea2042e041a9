"""Render grafana/dashboards/*.dashboard.py to grafana/generated/<uid>.json.

Each source defines `dashboard` (a grafanalib Dashboard) with a uid from
prometheus/config.yaml `dashboards:`. The JSON is committed: sorted keys, a fixed indent,
grafanalib's quirks fixed (common.fix_quirks), panel ids 1..n in order; no timestamps or
random ids, so a rerun is byte-identical and `--check` fails (exit 1) on a stale file.

Usage: python grafana/dashboards/generate.py [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "generated"
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (needs the path above)


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.name.removesuffix(".dashboard.py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dashboard


def render(dashboard) -> str:
    data = json.loads(json.dumps(dashboard.to_json_data(), default=lambda obj: obj.to_json_data()))
    return json.dumps(common.fix_quirks(data), sort_keys=True, indent=2) + "\n"


def generated() -> dict[str, str]:
    files = {}
    for path in sorted(HERE.glob("*.dashboard.py")):
        dashboard = load(path)
        if dashboard.uid not in common.UIDS.values() or f"{dashboard.uid}.json" in files:
            sys.exit(f"{path.name}: uid {dashboard.uid!r} is not one of config.yaml `dashboards:` or is taken")
        files[f"{dashboard.uid}.json"] = render(dashboard)
    missing = set(common.UIDS.values()) - {name.removesuffix(".json") for name in files}
    if missing:
        sys.exit(f"no source for the dashboards {sorted(missing)}")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when grafana/generated/ is stale")
    args = parser.parse_args()
    files = generated()
    present = {path.name for path in OUT.glob("*.json")}
    if args.check:
        stale = sorted(name for name, text in files.items()
                       if not (OUT / name).exists() or (OUT / name).read_text() != text)
        stale += sorted(present - set(files))
        if stale:
            print(f"stale in {OUT.relative_to(HERE.parents[1])}: {', '.join(stale)}; "
                  "run python grafana/dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name in present - set(files):
        (OUT / name).unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
