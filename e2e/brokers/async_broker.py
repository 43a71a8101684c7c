"""A third-party Open Service Broker, written with the `openbrokerapi` library from PyPI, for
Pier's end-to-end tests (e2e/tests/brokers.rs).

One offering, `kv` (plan `standard`). Provisioning is asynchronous: the broker answers 202, then
`last_operation` says "in progress" POLLS times before "succeeded". Bindings are synchronous and
carry credentials naming the instance and the binding. Each call is printed as one line
(`provision ID`, `last_operation ID in progress`, `bind ID BINDING`, ...) for the test to read.

Usage: async_broker.py PORT USERNAME PASSWORD [POLLS]
"""

import logging
import sys

from openbrokerapi import api, errors
from openbrokerapi.catalog import ServicePlan
from openbrokerapi.service_broker import (
    Binding,
    DeprovisionServiceSpec,
    LastOperation,
    OperationState,
    ProvisionedServiceSpec,
    ProvisionState,
    Service,
    ServiceBroker,
    UnbindSpec,
)


def say(*words):
    print(*words, flush=True)


class AsyncBroker(ServiceBroker):
    def __init__(self, polls):
        self.polls = polls
        # instance id -> polls still to answer "in progress"
        self.instances = {}

    def catalog(self):
        return Service(
            id="6a3c1d0e-kv-offering",
            name="kv",
            description="A key-value store (the e2e tests' third-party broker)",
            bindable=True,
            plan_updateable=False,
            tags=["kv", "third-party"],
            plans=[
                ServicePlan(
                    id="6a3c1d0e-kv-standard",
                    name="standard",
                    description="The one plan",
                )
            ],
        )

    def provision(self, instance_id, details, async_allowed, **kwargs):
        if not async_allowed:
            raise errors.ErrAsyncRequired()
        space = (details.context or {}).get("space_name")
        say("provision", instance_id, "space", space)
        self.instances[instance_id] = self.polls
        return ProvisionedServiceSpec(state=ProvisionState.IS_ASYNC, operation="provisioning")

    def last_operation(self, instance_id, operation_data=None, **kwargs):
        left = self.instances.get(instance_id)
        if left is None:
            raise errors.ErrInstanceDoesNotExist()
        if left > 0:
            self.instances[instance_id] = left - 1
            say("last_operation", instance_id, "in progress")
            return LastOperation(OperationState.IN_PROGRESS, f"{left} steps to go")
        say("last_operation", instance_id, "succeeded")
        return LastOperation(OperationState.SUCCEEDED, "ready")

    def bind(self, instance_id, binding_id, details, async_allowed, **kwargs):
        if instance_id not in self.instances:
            raise errors.ErrInstanceDoesNotExist()
        say("bind", instance_id, binding_id)
        return Binding(
            credentials={
                "uri": f"kv://user-{binding_id[:8]}:pw-{binding_id[:8]}@kv.example:7000/{instance_id}",
                "instance": instance_id,
                "binding": binding_id,
            }
        )

    def unbind(self, instance_id, binding_id, details, async_allowed, **kwargs):
        say("unbind", instance_id, binding_id)
        return UnbindSpec(is_async=False)

    def deprovision(self, instance_id, details, async_allowed, **kwargs):
        if self.instances.pop(instance_id, None) is None:
            raise errors.ErrInstanceDoesNotExist()
        say("deprovision", instance_id)
        return DeprovisionServiceSpec(is_async=False)


def main():
    port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    polls = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    logging.basicConfig(level=logging.WARNING)
    say("broker listening on", port)
    api.serve(
        AsyncBroker(polls),
        api.BrokerCredentials(user, password),
        host="127.0.0.1",
        port=port,
    )


if __name__ == "__main__":
    main()
