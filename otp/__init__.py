"""threadotp's actor runtime: Erlang/OTP processes, links, monitors and behaviours on threads.

>>> import otp
>>> def echo():
...     sender, msg = otp.receive()
...     otp.send(sender, ("echo", msg))
>>> pid = otp.spawn(echo)
>>> otp.send(pid, (otp.self(), "hi"))  # doctest: +ELLIPSIS
(...)
>>> otp.receive(("echo", otp.ANY), timeout=5)
('echo', 'hi')
"""

from otp._api import (
    ProcessInfo,
    add_death_hook,
    demonitor,
    exit,
    flush,
    is_alive,
    link,
    monitor,
    move_death_hook,
    post,
    process_info,
    processes,
    receive,
    register,
    remove_death_hook,
    self,
    send,
    sleep,
    spawn,
    spawn_link,
    spawn_monitor,
    spawn_opt,
    trap_exit,
    uninterruptible,
    unlink,
    unregister,
    whereis,
)
from otp._errors import AlreadyRegistered, BadReturn, NoProc, ProcessExit, StartError
from otp._process import Node, default_node, is_normal_exit, set_default_node
from otp._terms import ANY, TIMEOUT, Down, Exit, Pid, Ref, make_ref
from otp.gen_server import From, GenServer, call, cast, reply, stop
from otp.task import Task

__all__ = [
    "ANY", "AlreadyRegistered", "BadReturn", "Down", "Exit", "From", "GenServer", "NoProc",
    "Node", "Pid", "ProcessExit", "ProcessInfo", "Ref", "StartError", "TIMEOUT", "Task",
    "add_death_hook", "call", "cast", "default_node", "demonitor", "exit", "flush",
    "is_alive", "is_normal_exit", "link", "make_ref", "monitor", "move_death_hook", "post",
    "process_info", "processes", "receive", "register", "remove_death_hook", "reply", "self", "send", "set_default_node",
    "sleep", "spawn", "spawn_link", "spawn_monitor", "spawn_opt", "stop", "trap_exit",
    "uninterruptible", "unlink", "unregister", "whereis",
]

# Supervision (issue 3).
from otp import chaos, observer  # noqa: E402
from otp._clock import ManualClock  # noqa: E402
from otp.application import run  # noqa: E402
from otp.dynamic_supervisor import DynamicSupervisor  # noqa: E402
from otp.supervisor import ChildSpec, Supervisor  # noqa: E402
from otp.task_supervisor import TaskSupervisor  # noqa: E402

__all__ += [
    "ChildSpec", "DynamicSupervisor", "ManualClock", "Supervisor", "TaskSupervisor", "chaos",
    "observer", "run",
]
