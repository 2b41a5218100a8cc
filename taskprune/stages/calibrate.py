"""calibrate: the statistics the method's plan asks for, of every decoder linear, on general and on task text:
per-input-channel square sums, and with them full second moments when the plan says so."""

from __future__ import annotations

from taskprune import tensorfile
from taskprune.calibration import MomentWriter, collect_input_square_sums
from taskprune.calibration.blocks import calibration_blocks
from taskprune.config import Params
from taskprune.models.loading import load_local, pick_device
from taskprune.paths import Project, StageTimer, atomic_dir, write_json
from taskprune.target import statistics_needed


def run(params: Params, project: Project) -> None:
    timer = StageTimer(project, "calibrate")
    cfg = params.calibration
    statistics = statistics_needed(params)  # target mode: what every method it may try asks for
    device = pick_device(params.model.device)
    moments = "moments" in statistics
    influence = "influence" in statistics
    record = {"device": device, "num_samples": cfg.num_samples, "seq_len": cfg.seq_len, "moments": moments}
    with atomic_dir(project.stats) as out, atomic_dir(project.moments) as moments_out:
        if statistics:
            model, tokenizer, arch = load_local(project.dense_model, "cpu")  # layers are onloaded one at a time
            for side, ids in calibration_blocks(project, cfg, tokenizer).items():
                started = timer.seconds()
                layers: list[float] | None = [] if influence else None
                metadata = {"side": side, "tokens": ids.numel(), "seq_len": cfg.seq_len}
                # second moments go to disk layer by layer (one layer's at a time in memory)
                writer = MomentWriter(moments_out / side, metadata) if moments else None
                stats = collect_input_square_sums(model, arch, ids, cfg.batch_size, device, desc=f"calibrate {side}",
                                                  moments=writer, influence=layers)
                if influence:
                    metadata["influence"] = [round(v, 6) for v in layers]
                tensorfile.save(stats, out / f"{side}.safetensors", metadata)
                record[f"{side}_seconds"] = round(timer.seconds() - started, 2)
                record[f"{side}_blocks"] = len(ids)
        else:
            print(f"calibrate: method {params.prune.method} needs no calibration statistics")
        write_json(out / "stage.json", {k: v for k, v in record.items() if not k.endswith("_seconds")})
        write_json(moments_out / "stage.json", {"moments": moments})
    timer.done(**record)
