# The node's CoAP endpoint serving the test resource tree (coaptree.py) on a real UDP
# socket, for peers not written here (libcoap's coap-client, aiocoap) in
# test_coap_interop.py. MicroPython.
#   micropython coapnode.py PORT [TICK_MS]
# Every TICK_MS the counter goes up and its observers are notified (every 5th
# notification confirmable). Prints "coapnode ready PORT" once serving.
import sys
import time

from coap.endpoint import Endpoint
from coap.udp import UdpServer
from coaptree import Tree, COUNTER

port = int(sys.argv[1])
tick = int(sys.argv[2]) if len(sys.argv) > 2 else 300
ep = Endpoint(UdpServer("127.0.0.1", port))
tree = Tree(store=4096)
ep.serve_resources(tree, block1=4096)
print("coapnode ready", port)
due = time.ticks_add(time.ticks_ms(), tick)
while True:
    ep.serve(20)
    if time.ticks_diff(time.ticks_ms(), due) >= 0:
        due = time.ticks_add(due, tick)
        tree.counter += 1
        ep.changed(COUNTER, tree.counter % 5 == 0)
