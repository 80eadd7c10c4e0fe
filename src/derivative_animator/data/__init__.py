"""The data: scene templates, the curriculum dataset and its validation, the prompt format
shared by training and inference, the pretraining corpus and the Lightning data module.
Imports math and render; never the model."""
