"""The binaries (`uio2-train`, `uio2-eval`, `uio2-infer`, `uio2-predict`, `uio2-merge`) and their
flag and gin plumbing. Each is thin: flags -> library calls -> exit status; the library raises."""
