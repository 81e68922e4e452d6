"""Downstream finetune-evaluate (paper, section 4.1, appendix C): BigEarthNet, Vaihingen, SEN12MS-CR, SpaceNet2.

``run.finetune`` drives one task module (``bigearthnet``, ``vaihingen``, ``sen12ms_cr``, ``spacenet2``) through the
shared loop (``loop``), with the backbone of ``backbone`` and a head of ``heads``; metrics come from
``xgeo.metrics``.
"""
