# The application's entry (what an app slot starts; firmware/boot.py imports it): the
# aiotkit sensor node.
import node

node.main()
