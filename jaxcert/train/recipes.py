"""The literature's recipes for the state-of-the-art methods, as named configs (``--config NAME``).

Names are ``ARCH-DATASET-EPS-METHOD``: ``cnn7-mnist-0.3-mtl-ibp``, ``cnn7-cifar10-2-255-sabr`` (ε = 2/255),
``cnn3-fmnist-0.1-taps``; one recipe per (setting, method) for which the method's paper gives one, since
the method's own settings (λ, α, the split, L1) are tuned per setting. Each is the paper's command line
translated to a :class:`jaxcert.train.configs.TrainConfig` (imports no JAX):

- epochs → ``steps = epochs · (training examples // batch)``; the ε ramp from epoch ``start`` over ``length``
  epochs → ``warmup_frac = start / epochs``, ``ramp_frac = length / epochs`` (``eps_ramp="smooth"``, Shi et
  al.'s, which all three reference codes use); the learning-rate milestones → ``lr_decay_fracs`` with
  ``lr_decay_factor = 0.2``; Adam at 5e-4, gradient clipping at norm 10;
- CNN7 is ``cnn7_bn`` (BatchNorm after every hidden layer, all three papers) trained with the batch's
  statistics (``bn_mode="batch"``) and tested with the training set's (``bn_population``);
- Shi et al.'s IBP initialisation and warm-up regularisers (``init="ibp"``, ``reg_weight = reg_tol = 0.5``);
- the training ε: MTL-/CC-/EXP-IBP and TAPS/STAPS train MNIST at 2 × 0.1 and 1.334 × 0.3 (De Palma et al.'s
  ``--train-eps-mul``; TAPS's ``--train-eps 0.2 / 0.4``), SABR at the test ε (its README), CIFAR-10 at the
  test ε; ``eval_eps`` is the test ε, certified on the whole test split.

Sources (commands copied into the docstring of each group below): SABR — eth-sri/SABR ``README.md``
(Müller et al., ICLR 2023); TAPS/STAPS — eth-sri/TAPS ``scripts/train_mnist``, ``scripts/train_cifar`` (Mao et
al., NeurIPS 2023); MTL-/CC-/EXP-IBP — alessandrodepalma/expressive-losses ``README.md`` and ``config/*.json``
(De Palma et al., ICLR 2024). Not reproduced: CIFAR-10 data augmentation (random crops and flips), SABR's
shrinking box for 2/255 and its ``exp`` ε ramp, STAPS's ReLU shrinkage, the expressive losses' attack at
2.1 ε (CIFAR-10 2/255), and κ: the papers drop the clean loss at once, here κ ramps 1 → 0 with ε (at small ε
both losses are the clean CE). TAPS/STAPS train the papers' loss (``expand(R_TAPS, s) · L_IBP``, the scripts'
``--taps-grad-scale``) with IBP during the ε ramp (the scripts' default, ``taps_ibp_ramp``).

Fashion-MNIST (``fmnist``, offline here) has no published recipe: its ε = 0.1 recipes for CNN3 and CNN7 are the
MNIST ε = 0.1 recipes of each method, unchanged but for the data set (and the split of CNN3's classifier).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxcert.train.configs import TrainConfig

#: Training examples of each data set (for epochs → steps).
TRAIN_SIZE = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}
#: The TAPS split that leaves the reference's classifier block (CNN7: Dense(512), BatchNorm, ReLU, Dense).
CLASSIFIER_SPLIT = {"cnn7_bn": 17, "cnn3": 3}

#: ``{(dataset key, eps key): {method: fields}}``, each with ``epochs``, ``start``, ``length``, ``decays`` (epochs).
#: SABR (README): ``--bs 256 --epochs 70 --custom_schedule 50 60 --end_epoch_eps 22`` (start 2) and MNIST
#: ``--lambda_ratio 0.4 --l1 1e-5`` (0.1), ``0.6 / 1e-6`` (0.3); CIFAR-10 (batch 128) 2/255: ``--epochs 160
#: --custom_schedule 120 140 --end_epoch_eps 82 --lambda_ratio 0.1 --l1 1e-6``, 8/255: ``--epochs 180
#: --custom_schedule 140 160 --lambda_ratio 0.7``; PGD 8 steps from 0.5 ε, decayed (the defaults).
#: TAPS/STAPS: ``--train-batch 256 --n-epochs 70 --lr-milestones 50 60 --end-epoch-eps 20 --train-steps 20
#: --block-sizes 17 4`` (MNIST; STAPS ``--eps-shrinkage 0.4 --L1-reg 2e-5`` at 0.1, ``0.6 / 2e-6`` at 0.3);
#: CIFAR-10 ``--train-batch 128 --n-epochs 161 --lr-milestones 121 141 --start-epoch-eps 1 --end-epoch-eps 81
#: --L1-reg 2e-6``, TAPS 2/255 ``--block-sizes 4 17``, STAPS ``--eps-shrinkage 0.1`` (2/255), ``0.7`` (8/255);
#: ``--taps-grad-scale 4`` in the MNIST scripts and 2 in CIFAR-10 2/255 STAPS's (elsewhere CTRAIN's default, 5).
#: Expressive losses: MNIST ``--scheduler_opts=start=1,length=20 --lr-decay-milestones=50,60 --num-epochs=70
#: --train_att_n_steps 1 --train_att_step_size 10.0`` (batch 256), MTL-IBP ``--mtlibp_coeff 1e-2 --l1_coeff
#: 1e-5`` / CC-IBP ``0.1 / 2e-6`` at 0.1, MTL ``8e-2 / 1e-6`` / CC ``0.3 / 3e-6`` at 0.3; CIFAR-10 2/255
#: ``start=2,length=80 --lr-decay-milestones=120,140 --num-epochs=160 --train_att_n_steps 8
#: --train_att_step_size 0.25`` (batch 128), MTL ``4e-3 / 3e-6``, CC ``1e-2 / 3e-6``, EXP ``9.5e-2 / 4e-6``;
#: 8/255 ``--lr-decay-milestones=180,220 --num-epochs=260``, one step of 10 ε, MTL ``0.5 / 1e-7``, CC and EXP
#: ``0.5 / 0``.
_MNIST = {"epochs": 70, "decays": (50, 60), "batch_size": 256}
_SABR_MNIST = {**_MNIST, "start": 2, "length": 20}
_TAPS_MNIST = {**_MNIST, "start": 0, "length": 20, "attack_steps": 20, "taps_grad_scale": 4.0}
_EXPR_MNIST = {**_MNIST, "start": 1, "length": 20, "attack_steps": 1, "attack_step_rel": 10.0}
_TAPS_CIFAR = {"epochs": 161, "decays": (121, 141), "batch_size": 128, "start": 1, "length": 80}
_TAPS_CIFAR |= {"attack_steps": 20, "l1": 2e-6}
_EXPR_CIFAR_2 = {"epochs": 160, "decays": (120, 140), "batch_size": 128, "start": 2, "length": 80}
_EXPR_CIFAR_2 |= {"attack_steps": 8, "attack_step_rel": 0.25}
_EXPR_CIFAR_8 = {**_EXPR_CIFAR_2, "epochs": 260, "decays": (180, 220), "attack_steps": 1, "attack_step_rel": 10.0}

RECIPES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("mnist", "0.1"): {
        "sabr": {**_SABR_MNIST, "eps": 0.1, "sabr_lambda": 0.4, "l1": 1e-5},
        "taps": {**_TAPS_MNIST, "eps": 0.2},
        "staps": {**_TAPS_MNIST, "eps": 0.2, "sabr_lambda": 0.4, "l1": 2e-5},
        "mtl-ibp": {**_EXPR_MNIST, "eps": 0.2, "method_alpha": 1e-2, "l1": 1e-5},
        "cc-ibp": {**_EXPR_MNIST, "eps": 0.2, "method_alpha": 0.1, "l1": 2e-6},
    },
    ("mnist", "0.3"): {
        "sabr": {**_SABR_MNIST, "eps": 0.3, "sabr_lambda": 0.6, "l1": 1e-6},
        "taps": {**_TAPS_MNIST, "eps": 0.4},
        "staps": {**_TAPS_MNIST, "eps": 0.4, "sabr_lambda": 0.6, "l1": 2e-6},
        "mtl-ibp": {**_EXPR_MNIST, "eps": 0.3 * 1.334, "method_alpha": 8e-2, "l1": 1e-6},
        "cc-ibp": {**_EXPR_MNIST, "eps": 0.3 * 1.334, "method_alpha": 0.3, "l1": 3e-6},
    },
    ("cifar10", "2-255"): {
        "sabr": {"epochs": 160, "decays": (120, 140), "batch_size": 128, "start": 2, "length": 80}
        | {"sabr_lambda": 0.1, "l1": 1e-6},
        "taps": {**_TAPS_CIFAR, "taps_split": 4},
        "staps": {**_TAPS_CIFAR, "sabr_lambda": 0.1, "taps_grad_scale": 2.0},
        "mtl-ibp": {**_EXPR_CIFAR_2, "method_alpha": 4e-3, "l1": 3e-6},
        "cc-ibp": {**_EXPR_CIFAR_2, "method_alpha": 1e-2, "l1": 3e-6},
        "exp-ibp": {**_EXPR_CIFAR_2, "method_alpha": 9.5e-2, "l1": 4e-6},
    },
    ("cifar10", "8-255"): {
        "sabr": {"epochs": 180, "decays": (140, 160), "batch_size": 128, "start": 2, "length": 80}
        | {"sabr_lambda": 0.7},
        "taps": {**_TAPS_CIFAR},
        "staps": {**_TAPS_CIFAR, "sabr_lambda": 0.7},
        "mtl-ibp": {**_EXPR_CIFAR_8, "method_alpha": 0.5, "l1": 1e-7},
        "cc-ibp": {**_EXPR_CIFAR_8, "method_alpha": 0.5},
        "exp-ibp": {**_EXPR_CIFAR_8, "method_alpha": 0.5},
    },
}
#: The test ε of each setting.
TEST_EPS = {"0.1": 0.1, "0.3": 0.3, "2-255": 2 / 255, "8-255": 8 / 255}
DATASET_KEYS = {"mnist": "mnist", "fmnist": "fashion_mnist", "cifar10": "cifar10"}


def recipe_config(base: TrainConfig, name: str, arch: str, dataset: str, eps_key: str, method: str,
                  fields: dict[str, Any]) -> TrainConfig:  # fmt: skip
    """The config of one recipe: ``fields`` (with ``epochs``, ``start``, ``length``, ``decays`` in epochs)
    over the common settings of the module doc."""
    fields = dict(fields)
    epochs, start, length, decays = (fields.pop(k) for k in ("epochs", "start", "length", "decays"))
    steps = epochs * (TRAIN_SIZE[dataset] // fields["batch_size"])
    test_eps = TEST_EPS[eps_key]
    fields.setdefault("eps", test_eps)
    if method in ("taps", "staps"):
        fields.setdefault("taps_split", CLASSIFIER_SPLIT[arch])
    return dataclasses.replace(
        base, name=name, method=method, dataset=dataset, arch=arch, init="ibp", relaxation="ibp", steps=steps,
        warmup_frac=start / epochs, ramp_frac=length / epochs, lr_decay_fracs=tuple(d / epochs for d in decays),
        lr=5e-4, lr_decay_factor=0.2, grad_clip=10.0, eps_ramp="smooth", kappa_final=0.0, bn_mode="batch",
        bn_population=True, reg_weight=0.5, reg_tol=0.5, eval_eps=test_eps, test_limit=None,
        checkpoint_every=1000, log_every=50, out=f"runs/{name}", **fields,
    )  # fmt: skip


def literature_recipes(base: TrainConfig) -> dict[str, TrainConfig]:
    """Every recipe by name: CNN7 on MNIST and CIFAR-10 (the papers' settings) and CNN3 / CNN7 on
    Fashion-MNIST ε = 0.1 (the MNIST ε = 0.1 recipes)."""
    recipes = {}
    for (dataset, eps_key), methods in RECIPES.items():
        for method, fields in methods.items():
            name = f"cnn7-{dataset}-{eps_key}-{method}"
            recipes[name] = recipe_config(base, name, "cnn7_bn", DATASET_KEYS[dataset], eps_key, method, fields)
    for arch, arch_name in (("cnn3", "cnn3"), ("cnn7_bn", "cnn7")):
        for method, fields in RECIPES[("mnist", "0.1")].items():
            name = f"{arch_name}-fmnist-0.1-{method}"
            recipes[name] = recipe_config(base, name, arch, "fashion_mnist", "0.1", method, fields)
    return recipes
