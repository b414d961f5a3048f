"""Adversarial attacks (empirical robustness): PGD under ℓ∞ and ℓ2."""

from jaxcert.attacks.pgd import attack_loss, classification_margin, pgd, pgd_attack, project

__all__ = ["attack_loss", "classification_margin", "pgd", "pgd_attack", "project"]
