"""The job: one rank's set-up and loop (:mod:`.runtime`) on a frozen configuration
(:mod:`.config`), the lossless checks (:mod:`.checks`), the summary and report
(:mod:`.report`), the time prediction (:mod:`.predict`), ``plan --verify``
(:mod:`.verify`), and the failure layer (:mod:`.failures`, :mod:`.supervisor`).
"""
