"""Importers of object-detection annotations (Pascal VOC XML, YOLO txt, COCO JSON) and a COCO exporter.

One module per format (``voc``, ``yolo``, ``coco``), ``coco_export``, and ``common``: what the
importers share.

Every importer returns records whose boxes are normalised (x0, y0, x1, y1) fractions of the image, the
form the Azure JSONL schema uses, and a report that lists every image skipped and every object
dropped, with its reason. The rules for objects match those of the JSONL reader
(``visionsweep.data.detection_labels``): zero-size and inverted boxes are dropped; an image whose
objects are all dropped is skipped; an image without objects is kept as a background image. One
difference: a box that sticks out of the image by less than one pixel is clipped to the border,
because annotation tools and exporters round coordinates; a box further out is dropped.

Pixel coordinates (VOC, COCO) are divided by the image size that the annotation file declares: it is
the frame the boxes were drawn in, and normalised coordinates stay right when images were resized
later. An image whose real shape does not match that frame (a different aspect ratio, e.g. an EXIF
rotation the annotator did not see) is skipped, because its boxes would land in the wrong place.

Every image's header is read (``probe_listed_images``); one of more than ``max_image_pixels`` pixels
(the default of the setting of that name) is skipped as ``image too large``.
"""
from visionsweep.data.detection_formats import coco, voc, yolo  # noqa: F401  (register the importers)
