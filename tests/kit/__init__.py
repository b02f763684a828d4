"""Shared test helpers: a chain (`chainkit`), a fog (`fogkit`), meters (`meterkit`), a faulty
filesystem (`faultfs`), hand-written HTTP requests (`rawhttp`)."""
