"""The reader study: what no pipeline can run, handed to radiologists as a kit and scored when they answer.

MedSyn2 Tables 4 and 8 (two radiologists: does a case match the report and mask it was conditioned on?)
and ViCTr's Visual Turing test (real or synthetic?) need human readers. Rule ``reader_kit`` draws a
blinded, randomised set of real and synthetic held-out slices (:mod:`.draw`), renders them
(:mod:`.images`) into an offline web page (:mod:`.page`, :mod:`.kit`) and keeps the key apart; rule
``reader_scores`` reads the answer files the readers return (:mod:`.answers`) and scores them against
the key (:mod:`.scores`). :mod:`.settings` resolves the config section ``readers``.
"""
