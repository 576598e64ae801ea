"""Between the datasets and the model: training examples decoded from datasets, training
stages and held-out evaluation on store data, the proposal actors on Ray, the toy task."""
