"""The cloud data-labelling loop: fleet drives, edge triggers, an offboard teacher, a review queue, a label
store with provenance, retraining, and the round report (see ``drive.labelling.loop``)."""
