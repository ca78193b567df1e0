"""optical-clm: the study code the workflow scripts call.

Data format (`data`), corpus and tokenizer stages (`corpus`, `tokenizer`), model presets
(`models`), the one training loop used by pretraining and fine-tuning (`training`), and the
analysis (`analysis/`). Modules are imported explicitly (`from optical_clm import data`) so a
script pays only for what it uses.
"""

__version__ = "0.1.0"
