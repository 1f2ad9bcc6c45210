"""The demo report: overlays of masks, loss curves and the offline HTML page that shows them."""
