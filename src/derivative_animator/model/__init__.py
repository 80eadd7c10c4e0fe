"""The model: the shipped base and its pretraining, LoRA fine-tuning, decoding (speculative
drafting, the bracket guard, the header judge), self-consistency and the hosted-API client.
Imports math and data; never render: decoding judges headers without Manim."""
