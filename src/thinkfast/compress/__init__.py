"""Width compression (RED / Low-Rank Clone): a narrower student from a frozen teacher.

  erank.py      Roy-Vetterli eRank and Diff-eRank's covariance eRank, per layer over a dataset
  init.py       projection starts: gaussian, orthogonal, RED channel selection (Minitron importance)
  projected.py  the projected student and its merge into a plain smaller LanguageModel
  config.py     the typed ``thinkfast compress`` recipe
  recipe.py     the compression objective and the run (the distillation trainer's loop)
"""
