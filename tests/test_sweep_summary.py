"""sweep_summary.py: one metric by LoRA rank and epochs from a sweep's MLflow runs."""

from __future__ import annotations

from derivative_animator import sweep_summary


def test_a_named_sweep_run_twice_shows_its_newest_run_of_each_cell(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("derivative-animator", str(tmp_path / "artifacts"))

    def run(sweep, r, epochs, math, start):
        made = client.create_run(experiment, start_time=start, tags={"sweep": sweep})
        client.log_param(made.info.run_id, "lora/r", r)
        client.log_param(made.info.run_id, "trainer/max_epochs", epochs)
        client.log_metric(made.info.run_id, "val/math", math)
        return made.info.run_id

    run("lora_rank_sweep", 8, 1, 50.0, 1000)  # the first make sweep
    run("lora_rank_sweep", 16, 1, 60.0, 1001)
    newer = run("lora_rank_sweep", 8, 1, 70.0, 2000)  # the second, one cell so far
    run("other", 64, 1, 99.0, 1500)
    sweep, rows = sweep_summary.sweep_runs(uri, "derivative-animator", None, "val/math")
    assert sweep == "lora_rank_sweep"  # the newest run's sweep
    assert [row[:3] for row in rows] == [(8, 1, 70.0), (16, 1, 60.0)] and rows[0][3] == newer
    sweep, rows = sweep_summary.sweep_runs(uri, "derivative-animator", "other", "val/math")
    assert [row[:3] for row in rows] == [(64, 1, 99.0)]
