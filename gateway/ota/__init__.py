"""The gateway's OTA service (issue 14, item 6): signed images and campaigns.

``images``
    the image store: an upload is verified (``aiotkit.ota.image.verify``) against the
    gateway's trust set (``[ota] trust_file``) and the board's slot before anything is
    kept; a verified image is a file named by its SHA-256 (written atomically) plus a
    row of metadata (``Storage.ota``). A refused image leaves nothing behind.
``campaigns``
    the campaign engine: target selection, waves (a canary, then percentages), the
    failure threshold that aborts a campaign by itself, report timeouts (a silent node
    has failed), pause / resume / abort; every decision stored before it is acted on, so
    a restarted gateway carries on where it stopped. Delivery to the nodes goes through
    the ``Delivery`` protocol (``delivery``): ``LwM2MDelivery``, Firmware Update /5 for
    apps and Software Management /9 for models, pulling ``package``'s ``/fw/<id>``.
``service``
    ``OtaService``, what ``Gateway`` starts and stops and the REST API calls.
"""

from .campaigns import CampaignEngine, NodeInfo
from .delivery import Delivery, RecordingDelivery, UnavailableDelivery
from .errors import OtaServiceError
from .images import ImageStore
from .service import OtaService

__all__ = ["CampaignEngine", "Delivery", "ImageStore", "NodeInfo", "OtaService",
           "OtaServiceError", "RecordingDelivery", "UnavailableDelivery"]
