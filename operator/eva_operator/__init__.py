"""The eva operator: reconciles EvaRun resources by running each step as a Kubernetes Job.

Pure decisions live in ``plan`` (what to do next), ``jobs`` (the Job manifests) and
``admission`` (which specs and changes are accepted); ``reconciler``, ``kube`` and
``handlers`` are the imperative shell. Importing this package loads no ML library.
"""

from __future__ import annotations

from eva_runtime.api import API_VERSION, GROUP, KIND, PLURAL, VERSION

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]
