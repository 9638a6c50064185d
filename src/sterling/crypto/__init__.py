"""The only home of secrets: the sealed-data container, HPKE sealing, signatures and keystores."""
