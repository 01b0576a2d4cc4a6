"""COCOeval beside training (a Ray task): a task that never gets its CPUs does not hold the run's
last step forever; after `eval_wait_s` it is cancelled and its records are scored in rank 0."""
import pytest
import torch

pytestmark = [pytest.mark.integration]


def test_a_scoring_task_that_never_starts_is_cancelled_and_scored_here(synth_shards, predicting_model):
    import ray

    from maskx.datasets.stream import load_sources
    from maskx.datasets.vocab import Vocabulary
    from maskx.orchestrator.evaluation.shards import predict_on_shards, score_shares
    from maskx.orchestrator.serving.inference import load_model
    from maskx.orchestrator.training.background_evaluation import BackgroundScoring

    loaded = load_model(predicting_model(Vocabulary.load(synth_shards["vocab"])))
    sources, vocab = load_sources([(synth_shards["coco_val"], 1.0)])
    share = predict_on_shards(loaded.model, sources, vocab, batch_size=1, device=torch.device("cpu"))
    set_a = list(range(1, vocab.num_classes))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        # It asks for 2 CPUs of a 1-CPU cluster: as eval_cpus 1 beside workers that hold every CPU.
        scoring = BackgroundScoring(vocab=vocab, set_a=set_a, backend="faster-coco-eval", cpus=2,
                                    error_analysis=False, wait_s=3)
        scoring.submit([share], iteration=8)
        assert scoring.finished(wait=False) == []  # not done, not waited for
        [(iteration, evaluation)] = scoring.finished(wait=True)
    finally:
        ray.shutdown()
    here = score_shares([share], vocab, set_a, "faster-coco-eval", error_analysis=False)
    assert iteration == 8 and evaluation.metrics["segm/all/AP"] == here.metrics["segm/all/AP"] > 0
    assert scoring.pending == [] and scoring.shares == {}
