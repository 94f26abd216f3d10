"""Per-type rule parameters (what follows ``type:``): the readers ``load_rules`` uses.

A mixin of the YAML reader in ``rules.schema``: each ``params_<type>`` method validates the
keys one rule type takes and returns them as the rule's ``params``, reporting problems
with their location like every other part of the file.
"""

from __future__ import annotations

from typing import Any

import yaml


class ParamReaders:
    """``params_<type>`` readers; needs the host's ``fail``, ``scalar``, ``text``, ``mapping``,
    ``sequence``, ``check_account`` and ``check_procedure``."""

    fail: Any
    scalar: Any
    text: Any
    mapping: Any
    sequence: Any
    check_account: Any
    check_procedure: Any

    def params_reject(self, raw: dict[str, Any], node: yaml.Node, path: str) -> dict[str, Any]:
        return {"message": self.text(raw.get("message"), f"{path}.message", node)}

    def params_classification(self, raw: dict[str, Any], node: yaml.Node,
                              path: str) -> dict[str, Any]:
        return {"classification": self.text(raw.get("classification"),
                                            f"{path}.classification", node)}

    def params_auto_acknowledge(self, raw: dict[str, Any], node: yaml.Node,
                                path: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "template": self.text(raw.get("template"), f"{path}.template", node)}
        if "limit" in raw:  # this rule's own rate limit per sender (else the outbox's)
            spec = self.mapping(raw["limit"], f"{path}.limit", ("per_sender", "window_hours"))
            limit = {k: self.scalar(v, f"{path}.limit.{k}") for k, v in spec.items()}
            for key, value in limit.items():
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    self.fail(spec[key], f"{path}.limit.{key}", "expected a number >= 0")
            params["limit"] = limit
        return params

    params_auto_reply = params_auto_acknowledge

    def params_auto_process(self, raw: dict[str, Any], node: yaml.Node,
                            path: str) -> dict[str, Any]:
        if ("service_request" in raw) == ("procedure" in raw):
            self.fail(node, path, "give exactly one of 'service_request' or 'procedure'")
            return {}
        if "procedure" in raw:
            ref = str(self.scalar(raw["procedure"], f"{path}.procedure"))
            self.check_procedure(ref, raw["procedure"], f"{path}.procedure")
            return {"procedure": ref}
        action = self.scalar(raw["service_request"], f"{path}.service_request")
        if action not in ("create", "update"):
            self.fail(raw["service_request"], f"{path}.service_request",
                      f"unknown action {action!r}", "expected create or update")
        return {"service_request": action}

    def params_auto_redirect(self, raw: dict[str, Any], node: yaml.Node,
                             path: str) -> dict[str, Any]:
        target = self.mapping(raw.get("to", node), f"{path}.to", ("account", "address"))
        if len(target) != 1:
            self.fail(raw.get("to", node), f"{path}.to", "give exactly one of account or address")
            return {}
        [(kind, value_node)] = target.items()
        value = str(self.scalar(value_node, f"{path}.to.{kind}"))
        if kind == "account":
            self.check_account(value, value_node, f"{path}.to.account")
        elif "@" not in value:
            self.fail(value_node, f"{path}.to.address", f"{value!r} is not an email address")
        mode = self.scalar(raw["mode"], f"{path}.mode") if "mode" in raw else (
            "reprocess" if kind == "account" else "resend")
        if mode not in ("reprocess", "resend", "attach"):
            self.fail(raw["mode"], f"{path}.mode", f"unknown mode {mode!r}",
                      "expected resend or attach (external), reprocess (account)")
        return {kind: value, "mode": mode}

    def params_document_retrieval(self, raw: dict[str, Any], node: yaml.Node,
                                  path: str) -> dict[str, Any]:
        if "documents" not in raw:
            self.fail(node, f"{path}.documents", "required key is missing")
            return {}
        docs = [str(self.scalar(n, f"{path}.documents"))
                for n in self.sequence(raw["documents"], f"{path}.documents")]
        return {"documents": docs}

    def params_routing(self, raw: dict[str, Any], node: yaml.Node, path: str) -> dict[str, Any]:
        if "route" not in raw:
            self.fail(node, f"{path}.route", "required key is missing")
            return {}
        return self.read_route(raw["route"], f"{path}.route", top=True)

    def read_route(self, node: yaml.Node, path: str, top: bool) -> dict[str, Any]:
        allowed = ("group", "agent", "original_agent", "default") if top else ("group", "agent")
        spec = self.mapping(node, path, allowed)
        if "original_agent" in spec:
            if "default" not in spec:
                self.fail(node, f"{path}.default", "original_agent needs a default destination")
                return {}
            return {"original_agent": True,
                    "default": self.read_route(spec["default"], f"{path}.default", False)}
        targets = {k: str(self.scalar(v, f"{path}.{k}")) for k, v in spec.items()
                   if k in ("group", "agent")}
        if len(targets) != 1:
            self.fail(node, path, "give exactly one of group, agent or original_agent")
            return {}
        return targets
