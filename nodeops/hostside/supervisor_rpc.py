# supervisord's XML-RPC over its unix socket, included by the programs that speak to it
# (they set sock_path and import xmlrpc.client first): gives them `rpc`.
import http.client, socket
class _Connection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock_path)
class _Transport(xmlrpc.client.Transport):
    def make_connection(self, host):
        return _Connection('localhost')
rpc = xmlrpc.client.ServerProxy('http://localhost/RPC2', transport=_Transport()).supervisor
