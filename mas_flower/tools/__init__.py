"""Operator tools: the `mas-flower` command line (`cli`), running the app on a SuperLink of its own
(`launch`, `processes`), benchmark suites (`suite`, `bench`, `summary`, `report`) and deployment on
real machines (`deploy`, `security`). The library and the strategy layer never import this package."""
