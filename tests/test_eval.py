"""kNN / linear evaluation: the classifier against a brute-force vote, the CLI end to end."""

import json
import subprocess
import sys

import torch

from simwnw_hf.eval.knn import knn_predict


def test_knn_predict_matches_bruteforce():
    torch.manual_seed(0)
    bank, labels, queries = torch.randn(30, 5), torch.randint(0, 3, (30,)), torch.randn(7, 5)
    scores = knn_predict(bank, labels, queries, num_classes=3, k=4, temperature=0.1, chunk=3)
    for q in range(7):
        sims = torch.nn.functional.cosine_similarity(queries[q:q + 1], bank)
        expected = torch.zeros(3)
        for i in sims.argsort(descending=True)[:4]:
            expected[labels[i]] += torch.exp(sims[i] / 0.1)
        assert torch.allclose(scores[q], expected, rtol=1e-5)


def test_cli_knn_and_linear_random_init(tmp_path):
    base = [sys.executable, "-m", "simwnw_hf.eval"]
    common = ["--random-init", "--model", "simwnw_resnet18_cifar", "--max-train", "100", "--max-test", "50",
              "--output-json", str(tmp_path / "eval.json")]
    knn = subprocess.run(base + ["knn"] + common, capture_output=True, text=True, timeout=300)
    assert knn.returncode == 0, knn.stderr[-2000:]
    result = json.loads(knn.stdout.strip().splitlines()[-1])
    assert 0 <= result["top1"] <= 100 and result["k"] == 200 and result["num_test"] == 50
    lin = subprocess.run(base + ["linear", "--epochs", "3"] + common, capture_output=True, text=True, timeout=300)
    assert lin.returncode == 0, lin.stderr[-2000:]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) == {"knn", "linear"}


def test_cli_errors_are_clear(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simwnw_hf.eval", "knn", "--checkpoint", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no model.safetensors" in proc.stderr


def test_cli_evaluates_a_vit_trained_at_another_image_size(tmp_path):
    """A ViT trained at --image-size 32 has a position embedding for 32 px: the CLI builds it that way
    (it once built the 224 px default and refused the checkpoint on pos_embed's shape)."""
    from simwnw_hf.eval.__main__ import main
    from simwnw_hf.train.config import TrainConfig
    from simwnw_hf.train.trainer import train

    train(TrainConfig(framework="simsiam", model="simwnw_vit_tiny_patch16_224", image_size=32, batch_size=4,
                      max_samples=8, max_steps=1, knn_eval=False, output_dir=str(tmp_path),
                      framework_args='{"hidden_dim": 32, "out_dim": 32}'))
    result = main(["knn", "--checkpoint", str(tmp_path), "--max-train", "16", "--max-test", "8"])
    assert 0 <= result["top1"] <= 100 and result["num_test"] == 8
