"""Codes, pure (no MPI): :mod:`.coding` over GF(65537) for the IV exchanges (blocks,
codes drawn and verified, encode / combine / decode, the broadcast's wire format),
:mod:`.gradcode` over GF(2^31 - 1) for gradient coding (HGC, flat GC, JNCSS). See
docs/codes.md.
"""
