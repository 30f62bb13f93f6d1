"""Distillation: Llamba via MOHAWK, MambaInLlama hybrids, SFT and pretraining, one training loop.

    config.load_config(yaml, overrides) / build_config(dict) -> DistillConfig   (typed, strict)
    recipe.run_recipe(cfg)          every stage in order, resumable, alone or under torchrun
    stages.build_objective(...)     lm | matrix (MOHAWK 1) | hidden (MOHAWK 2) | kd (MOHAWK 3)
    trainer.Trainer(objective, data, train_cfg, out_dir).fit()
    losses                          pure loss functions; metrics.compare_to_teacher
"""
