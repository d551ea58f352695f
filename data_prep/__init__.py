"""Raw dataset -> prepared cache. One module per dataset, plus media helpers."""
