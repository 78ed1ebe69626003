"""The method's steps as plain functions, testable without Flower: site training, fine-tuning and
evaluation, MIM pretraining, distillation and the server step."""
