"""The training core shared by single-process training and the runtime: model and its stages,
corpus and tokenizer, optimizer and learning-rate schedule, evaluation of sparse pipelines."""
