"""What a model holds inside, read without changing it: loss by position (positions.py), attention patterns
(attention.py), heads by role (heads.py), the logit lens (lens.py), a linear probe (probe.py), their pictures
(pictures.py, view.py) and what of them is written to a run (record.py)."""
