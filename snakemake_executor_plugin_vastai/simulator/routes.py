"""What each REST endpoint does (the HTTP machinery around them is in ``api.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .api import HttpError, LogStore, Request, Response, Route
from .faults import FaultPlan
from .fleet import CreateRefused, Fleet, FleetClosed
from .instances import Instance
from .listing import page_instances
from .market import Market

USER_ID = 424242
KEY_ID = 31337  # the id of the account's (only) API key


class Endpoints:
    """Handlers bound to one simulator's fleet, market and log store."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        market: Market,
        plan: FaultPlan,
        logs: LogStore,
        base_url: Callable[[], str],
        api_key: str,
        credit: float,
        truth: Callable[[], dict[str, Any]],
        add_fault: Callable[..., None],
    ) -> None:
        self.fleet = fleet
        self.market = market
        self.plan = plan
        self.logs = logs
        self.base_url = base_url
        self.api_key = api_key
        self.credit = credit
        self.truth_fn = truth
        self.add_fault_fn = add_fault

    def routes(self) -> list[Route]:
        """The authenticated API."""
        v0 = "/api/v0"
        return [
            Route("GET", f"{v0}/users/current", self.user),
            Route("POST", f"{v0}/bundles/", self.search),
            Route("PUT", f"{v0}/search/asks/", self.search_new),
            Route("PUT", f"{v0}/asks/{{id}}/", self.create),
            Route("GET", f"{v0}/instances/", self.list_v0),
            Route("GET", "/api/v1/instances/", self.list_v1),
            Route("GET", f"{v0}/instances/filters/", self.filters),
            Route("PUT", f"{v0}/instances/reboot/{{id}}/", self.reboot),
            Route("PUT", f"{v0}/instances/bid_price/{{id}}/", self.change_bid),
            Route("PUT", f"{v0}/instances/request_logs/{{id}}/", self.request_logs),
            Route("GET", f"{v0}/instances/{{id}}/", self.show),
            Route("PUT", f"{v0}/instances/{{id}}/", self.update),
            Route("DELETE", f"{v0}/instances/{{id}}/", self.destroy),
            Route("DELETE", f"{v0}/instances/", self.destroy_many),
            Route("POST", f"{v0}/instances/{{id}}/ssh/", self.attach_ssh),
            Route("GET", f"{v0}/ssh/", self.list_keys),
            Route("POST", f"{v0}/ssh/", self.add_key),
            Route("DELETE", f"{v0}/ssh/{{id}}/", self.remove_key),
        ]

    def control(self) -> list[Route]:
        """Unauthenticated simulator control and the 'S3' log URLs."""
        return [
            Route("GET", "/_sim/logs/{token}", self.log_url, auth=False),
            Route("GET", "/_sim/truth", lambda r: self.truth_fn(), auth=False),
            Route("POST", "/_sim/faults", self.post_fault, auth=False),
            Route("DELETE", "/_sim/faults", self.clear_faults, auth=False),
            Route("POST", "/_sim/foreign", self.post_foreign, auth=False),
        ]

    # ----- helpers

    def _instance(
        self, req: Request, error: str = "not_found", msg: str = "Instance not found"
    ) -> Instance:
        """The instance of the path, or the endpoint's documented 404."""
        inst = self.fleet.get(_int(req.params["id"]))
        if inst is None:
            raise HttpError(404, error, msg)
        return inst

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        if not isinstance(req.body, dict):
            raise HttpError(400, "invalid_args", "request body must be a JSON object")
        return req.body

    # ----- account

    def user(self, req: Request) -> dict[str, Any]:
        billed = sum(i.truth()["billed_dollars"] for i in self.fleet.everything() if not i.foreign)
        keys = self.fleet.account_keys()
        return {
            "id": USER_ID,
            "username": "simulated-user",
            "email": "sim-user@example.invalid",
            "fullname": "Simulated User",
            "balance": 0.0,
            "credit": round(self.credit - billed, 6),
            "can_pay": True,
            "has_billing": True,
            "billed_expected": 0.0,
            "user_type": "client",
            "email_verified": True,
            "key_id": KEY_ID,
            "ssh_key": keys[-1]["public_key"] if keys else "",
            "api_key": self.api_key,
            "sid": "",
            "rights": None,
            "balance_threshold": 0.0,
            "balance_threshold_enabled": False,
            "got_signup_credit": True,
        }

    # ----- offers

    def search(self, req: Request) -> dict[str, Any]:
        return {"offers": self.market.search(self._body(req))}

    def search_new(self, req: Request) -> dict[str, Any]:
        q = self._body(req).get("q")
        if not isinstance(q, dict):
            raise HttpError(400, "invalid_args", "body must carry the query as 'q'")
        return {"offers": self.market.search(q)}

    def create(self, req: Request) -> Response | dict[str, Any]:
        try:
            iid = self.fleet.create(_int(req.params["id"]), self._body(req))
        except CreateRefused as exc:
            raise HttpError(exc.status, exc.error, exc.msg, ask_id=exc.offer_id) from None
        except ValueError as exc:
            raise HttpError(400, "invalid_args", str(exc)) from None
        except FleetClosed as exc:
            raise HttpError(503, "server_error", str(exc)) from None
        inst = self.fleet.get(iid)
        return {"success": True, "new_contract": iid,
                "instance_api_key": inst.api_key if inst is not None else ""}

    # ----- instances

    def list_v0(self, req: Request) -> dict[str, Any]:
        return {"instances": [i.row() for i in self.fleet.visible()]}

    def list_v1(self, req: Request) -> dict[str, Any]:
        return page_instances([i.row() for i in self.fleet.visible()], req.query)

    def filters(self, req: Request) -> dict[str, Any]:
        combos = {
            (r["actual_status"], r["verification"], r["gpu_name"])
            for r in (i.row() for i in self.fleet.visible())
        }
        return {
            "filters": [
                {"actual_status": s, "verification": v, "gpu_name": g}
                for s, v, g in sorted(combos, key=str)
            ]
        }

    def show(self, req: Request) -> dict[str, Any]:
        iid = _int(req.params["id"])
        inst = self.fleet.get(iid)
        if inst is not None:
            return {"instances": inst.row()}
        ended = self.fleet.ended(iid)
        mode = self.plan.gone_answer() if ended is not None else None
        if mode == "404":
            raise HttpError(404, "not_found", "Instance not found")
        if mode == "row" and ended is not None:
            going = dict.fromkeys(("intended_status", "cur_state", "next_state"), "destroyed")
            return {"instances": {**ended.row(), **going, "actual_status": "exited"}}
        return {"instances": None}  # the SDK's show_instance reads this as gone

    def update(self, req: Request) -> dict[str, Any]:
        inst, body = self._instance(req), self._body(req)
        if "label" in body:
            inst.spec.label = None if body["label"] is None else str(body["label"])
            return {"success": True}
        state = body.get("state")
        if state == "stopped":
            inst.stop_by_request()
            return {"success": True}
        if state == "running":
            inst.start_by_request()  # a running one stays as it is
            return {"success": True}
        raise HttpError(400, "invalid_args", "give a label or a state (stopped or running)")

    def destroy(self, req: Request) -> dict[str, Any]:
        iid = _int(req.params["id"])
        if not self.fleet.destroy(iid):
            raise HttpError(404, "not_found", "Instance not found")
        return {"success": True, "msg": f"destroying instance {iid}."}

    def destroy_many(self, req: Request) -> dict[str, Any]:
        """``vastai destroy instances``: several ids in one call. The real answer's shape
        is not documented; clients should confirm each instance gone, as ours does."""
        ids = self._body(req).get("instance_ids")
        if not isinstance(ids, list) or not ids:
            raise HttpError(400, "invalid_args", "instance_ids must be a non-empty list")
        done = [iid for iid in (_int(str(i)) for i in ids) if self.fleet.destroy(iid)]
        return {"success": True, "destroyed": done}

    def change_bid(self, req: Request) -> dict[str, Any]:
        """``vastai change bid``: a new bid price for an interruptible instance."""
        inst = self._instance(req, "no_such_instance", "Instance with that ID does not exist.")
        body = self._body(req)
        try:
            inst.change_bid(float(body.get("price")))
        except (TypeError, ValueError) as exc:
            raise HttpError(400, "invalid_args", str(exc)) from None
        return {"success": True}

    def reboot(self, req: Request) -> dict[str, Any]:
        self._instance(req).reboot()
        return {"success": True}

    def attach_ssh(self, req: Request) -> dict[str, Any]:
        inst = self._instance(req)
        key = self._body(req).get("ssh_key")
        if not isinstance(key, str) or len(key.split()) < 2:
            raise HttpError(400, "invalid_args", "ssh_key must be an OpenSSH public key line")
        inst.attach_key(key.strip())
        return {"success": True, "msg": "SSH key added to instance."}

    def request_logs(self, req: Request) -> dict[str, Any]:
        inst, body = self._instance(req, "invalid_id", "Invalid instance id."), self._body(req)
        try:
            tail = int(body["tail"]) if body.get("tail") not in (None, "") else None
        except (TypeError, ValueError):
            raise HttpError(400, "invalid_args", "tail must be an integer") from None
        daemon = str(body.get("daemon_logs", "")).lower() == "true"
        text = inst.log_text(tail=tail, grep=body.get("filter") or None, daemon=daemon)
        token = self.logs.put(text)
        return {
            "success": True,
            "result_url": f"{self.base_url()}/_sim/logs/{token}",
            "msg": "Log request submitted.",
        }

    def log_url(self, req: Request) -> Response:
        text = self.logs.get(req.params["token"])
        if text is None:
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                "<Message>The specified key does not exist.</Message></Error>"
            )
            return Response(404, body, "application/xml")
        return Response(200, text, "text/plain; charset=utf-8")

    # ----- account keys

    def list_keys(self, req: Request) -> list[dict[str, Any]]:
        return [
            {
                "id": k["id"],
                "user_id": USER_ID,
                "public_key": k["public_key"],
                "created_at": k["created_at"],
                "deleted_at": None,
            }
            for k in self.fleet.account_keys()
        ]

    def add_key(self, req: Request) -> dict[str, Any]:
        key = self._body(req).get("ssh_key")
        if not isinstance(key, str) or len(key.split()) < 2:
            raise HttpError(400, "invalid_args", "ssh_key must be an OpenSSH public key line")
        return {"success": True, "key": self.fleet.add_account_key(key)}

    def remove_key(self, req: Request) -> dict[str, Any]:
        if not self.fleet.remove_account_key(_int(req.params["id"])):
            raise HttpError(404, "no_such_key", f"SSH key {req.params['id']} not found.")
        return {"success": True}

    # ----- control

    def post_fault(self, req: Request) -> dict[str, Any]:
        body = dict(self._body(req))
        kind = body.pop("kind", None)
        if not isinstance(kind, str):
            raise HttpError(400, "invalid_args", "a fault needs a 'kind'")
        try:
            self.add_fault_fn(kind, **body)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, "invalid_args", str(exc)) from None
        return {"success": True}

    def clear_faults(self, req: Request) -> dict[str, Any]:
        self.plan.clear()
        return {"success": True}

    def post_foreign(self, req: Request) -> dict[str, Any]:
        label = self._body(req).get("label") or "someone-else"
        return {"success": True, "id": self.fleet.create_foreign(str(label))}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HttpError(400, "invalid_args", f"not an id: {text!r}") from None
