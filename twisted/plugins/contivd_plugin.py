"""
The twistd plugin: C{twistd contivd} runs the agent.

The plugin only names the options and hands them to
L{contivd.service.make_service}; importing the rest of the agent waits
until twistd actually runs it.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _ContivdServiceMaker:
    tapname = "contivd"
    description = "contivd: the container network agent (Contiv netplugin)"

    @property
    def options(self):
        from contivd.options import AgentOptions

        return AgentOptions

    def makeService(self, options):
        from contivd.service import make_service

        return make_service(options)


contivd = _ContivdServiceMaker()
