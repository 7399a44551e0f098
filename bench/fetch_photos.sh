#!/usr/bin/env bash
# Photos for bench/watermark.py --photos: ordinary photographs from two Debian packages
# (the MATE desktop's nature backgrounds and KDE Plasma's wallpapers), which the watermark was
# never tuned on. Downloads the two .deb files with apt (an explicit step: nothing in the
# bench downloads by itself), extracts the chosen photos to bench/data/photos/ (not committed:
# the licences are the packages' own) and prints their SHA-256.
set -euo pipefail
cd "$(dirname "$0")"
out=data/photos
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download mate-backgrounds plasma-workspace-wallpapers >/dev/null)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
mkdir -p "$out"
mate="$work/x/usr/share/backgrounds/mate/nature"
for name in Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower; do
  cp "$mate/$name.jpg" "$out/mate-$name.jpg"
done
plasma="$work/x/usr/share/wallpapers"
# the photographs among Plasma's wallpapers (the rest are drawings); the smallest size shipped
for name in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite MilkyWay OneStandsOut Path Volna summer_1am; do
  smallest=$(ls -S "$plasma/$name/contents/images/"* | tail -1)
  cp "$smallest" "$out/plasma-$name.${smallest##*.}"
done
(cd "$out" && sha256sum * )
