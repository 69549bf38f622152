"""Network drivers.  Each module is one driver class implementing
:class:`pynet.cnm.driver.Driver`; built with the side-effect interfaces
(Netlink, Sysctl, ...) it needs.  Import a driver module directly (e.g.
``pynet.drivers.bridge``) so that an entry point loads only what it uses."""
