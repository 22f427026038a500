"""Publishing a build: the image to a registry, the signed ACI to an appc discovery site.

``flow`` checks both sides before either writes; ``docker`` pushes with skopeo; ``aci`` plans,
writes and rolls back the site's files; ``discovery`` says where they go and writes the page;
``site`` is a directory or an HTTP server; ``retry`` bounds every network operation.
"""
