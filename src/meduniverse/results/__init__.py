"""Results: run directories and their lifecycle, the results document, statistics, experiments over
seeds and adaptation to unseen sites."""
